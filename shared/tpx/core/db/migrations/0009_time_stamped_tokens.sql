-- Tokens minted from this release on carry the second they were minted, and `token_hash` holds their
-- lookup key: that second (5 bytes, big-endian) followed by the token's SHA-256 (tpx.core.tokens). In
-- time order, new keys go to the right edge of tokens_token_hash and live tokens' lookups read its
-- recent pages, however many rows the table keeps; first-format tokens keep their SHA-256 alone.
--
-- Compatible with the previous release during a rollout: its replicas read first-format tokens, which
-- this release's replicas mint as long as one of them is connected (tpx.exchange.token_format). This
-- schema version keeps one that restarts from coming back.
COMMENT ON COLUMN tokens.token_hash IS
    'lookup key: the mint second (5 bytes) + SHA-256 of the token, or the SHA-256 alone (first format); '
    'the token itself is never stored';
