"""Every PostgreSQL advisory lock tpx takes, in one table, so no two uses can collide.

One-bigint locks are "tpx" plus a letter; the jwks-refresher's per-issuer
locks use the two-int form with their own class, so they never meet these.
"""

MIGRATIONS = 0x7470_7801  # transaction: one replica applies migrations at a time
RELAY_LEADER = 0x7470_7852  # session: the one relay that publishes ("tpxR")
SEQUENCE = 0x7470_7853  # transaction: guards sequence assignment even if two leaders overlap ("tpxS")
MINT_GATE = 0x7470_7847  # transaction: mints share it, a revocation fixing its cutoff takes it alone ("tpxG")
JWKS_FETCH_CLASS = 0x7470_784A  # session, (class, issuer): one fetch of an issuer at a time ("tpxJ")
