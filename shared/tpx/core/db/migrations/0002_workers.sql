-- Workers: the jwks-refresher's per-issuer bookkeeping and the revoker's revocation rules.

-- Refresher state. refresh_attempted_at is the cluster-wide cooldown clock: a replica
-- may fetch an issuer only if it moves this timestamp forward by a conditional UPDATE.
ALTER TABLE issuers
    ADD COLUMN refresh_requested_at  timestamptz,
    ADD COLUMN refresh_attempted_at  timestamptz,
    ADD COLUMN next_refresh_at       timestamptz,
    ADD COLUMN consecutive_failures  integer NOT NULL DEFAULT 0,
    ADD COLUMN jwks_hosts            text[];   -- operator-approved JWKS hosts besides the issuer's own

-- Exchange replicas reload only when something they use changes, not on refresher bookkeeping.
DROP TRIGGER issuers_notify ON issuers;
CREATE TRIGGER issuers_notify_insert_delete AFTER INSERT OR DELETE ON issuers
    FOR EACH STATEMENT EXECUTE FUNCTION tpx_issuers_notify();
CREATE TRIGGER issuers_notify_update AFTER UPDATE OF url, kind, audience, algorithms, allowed_packages,
        max_token_lifetime_seconds, enabled, keys_fetched_at, last_error ON issuers
    FOR EACH STATEMENT EXECUTE FUNCTION tpx_issuers_notify();

-- A revocation is a rule first (effective at once for introspection on every replica,
-- since introspection consults pending rules) and is then applied to token rows in
-- batches by the revoker, which marks it done.
CREATE TABLE revocations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text NOT NULL CHECK (kind IN ('token', 'publisher', 'package', 'repository')),
    token_id        uuid,
    publisher_id    uuid,
    package         text,
    repository_key  text,
    workflow        text,
    issued_after    timestamptz,
    issued_before   timestamptz,
    cutoff          timestamptz NOT NULL DEFAULT now(),  -- only tokens issued up to this moment are affected
    reason          text NOT NULL,
    actor           text,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    revoked         integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX revocations_pending ON revocations (created_at) WHERE status = 'pending';
CREATE INDEX tokens_by_issued_at ON tokens (issued_at);
