-- Secrets the servers share, made once per database: every replica reads the same ones at start.
-- actor_fingerprint keys the HMAC that names an admin credential in events ("credential:<12 hex>"),
-- so a reader of the event stream cannot test guesses of a credential against it.
-- Two random UUIDs give 244 random bits from the server's strong random source, without pgcrypto.
CREATE TABLE server_secrets (
    name   text PRIMARY KEY,
    value  bytea NOT NULL
);
INSERT INTO server_secrets (name, value)
VALUES ('actor_fingerprint', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
