-- tpx initial schema. Applied by `tpx migrate` under an advisory lock.
-- Hot lookups and their indexes:
--   exchange:      used_jtis PK (issuer_id, jti); publishers_by_repository
--   introspection: tokens_token_hash (unique)
--   revocation:    tokens_publisher_ids (GIN), tokens_packages (GIN), tokens_by_repository
--   expiry/purge:  tokens_live_by_expiry, used_jtis_by_expiry
--   relay:         outbox_unsequenced, outbox_unpublished

CREATE TABLE issuers (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url                         text NOT NULL UNIQUE,
    kind                        text NOT NULL CHECK (kind IN ('github', 'gitlab')),
    audience                    text,              -- NULL: the service's TPX_AUDIENCE
    algorithms                  text[] NOT NULL DEFAULT ARRAY['RS256'],
    allowed_packages            text[],            -- NULL: any package
    max_token_lifetime_seconds  integer NOT NULL DEFAULT 7200 CHECK (max_token_lifetime_seconds > 0),
    enabled                     boolean NOT NULL DEFAULT true,
    jwks_uri                    text,
    keys_fetched_at             timestamptz,
    last_error                  text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

-- The public keys of each issuer, written by the jwks-refresher, read by every exchange replica.
CREATE TABLE issuer_keys (
    issuer_id   uuid NOT NULL REFERENCES issuers (id) ON DELETE CASCADE,
    kid         text NOT NULL,
    jwk         jsonb NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer_id, kid)
);

CREATE TABLE publishers (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    package                     text NOT NULL,
    provider                    text NOT NULL CHECK (provider IN ('github', 'gitlab')),
    issuer_id                   uuid NOT NULL REFERENCES issuers (id) ON DELETE RESTRICT,
    owner                       text NOT NULL,
    owner_id                    text,
    name                        text NOT NULL,
    name_id                     text,
    workflow                    text NOT NULL,
    environments                text[] NOT NULL DEFAULT '{}',
    ref_patterns                text[] NOT NULL DEFAULT '{}',
    allow_self_hosted_runners   boolean NOT NULL DEFAULT false,
    require_protected_ref       boolean NOT NULL DEFAULT false,
    token_ttl_seconds           integer CHECK (token_ttl_seconds IS NULL OR token_ttl_seconds > 0),
    permissions                 text[] NOT NULL DEFAULT ARRAY['publish-update'],
    -- Normalised identity (names folded, environments sorted) for duplicate detection.
    identity_key                text NOT NULL,
    repository_key              text NOT NULL GENERATED ALWAYS AS (lower(owner || '/' || name)) STORED,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    bound_at                    timestamptz
);
CREATE UNIQUE INDEX publishers_identity ON publishers (issuer_id, identity_key);
CREATE INDEX publishers_by_repository ON publishers (issuer_id, repository_key);
CREATE INDEX publishers_by_package ON publishers (package);

-- One row per (issuer, jti) that minted a token; kept until exp + leeway.
CREATE TABLE used_jtis (
    issuer_id   uuid NOT NULL,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (issuer_id, jti)
);
CREATE INDEX used_jtis_by_expiry ON used_jtis (expires_at);

CREATE TABLE tokens (
    id                  uuid PRIMARY KEY,
    token_hash          bytea NOT NULL,          -- SHA-256 of the token; the token itself is never stored
    issuer_id           uuid NOT NULL,
    packages            text[] NOT NULL,
    permissions         jsonb NOT NULL,
    publisher_ids       uuid[] NOT NULL,
    ci                  jsonb NOT NULL,          -- the CI identity, without personal data
    repository_key      text NOT NULL,
    workflow            text NOT NULL,
    issued_at           timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    revoked_at          timestamptz,
    revocation_reason   text,
    expired_at          timestamptz              -- set by the revoker when it announces token.expired
);
CREATE UNIQUE INDEX tokens_token_hash ON tokens (token_hash);
CREATE INDEX tokens_publisher_ids ON tokens USING gin (publisher_ids);
CREATE INDEX tokens_packages ON tokens USING gin (packages);
CREATE INDEX tokens_by_repository ON tokens (repository_key, issued_at);
CREATE INDEX tokens_live_by_expiry ON tokens (expires_at) WHERE revoked_at IS NULL AND expired_at IS NULL;

-- Transactional outbox: an event commits with the change it describes; the relay
-- assigns a gap-free sequence in its own step, then publishes in sequence order.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    type          text NOT NULL,
    source        text NOT NULL,
    subject       text,
    time          timestamptz NOT NULL DEFAULT now(),
    data          jsonb NOT NULL,
    sequence      bigint UNIQUE,
    published_at  timestamptz
);
CREATE INDEX outbox_unsequenced ON outbox (id) WHERE sequence IS NULL;
CREATE INDEX outbox_unpublished ON outbox (sequence) WHERE published_at IS NULL AND sequence IS NOT NULL;

-- No NOTIFY trigger on the outbox: NOTIFY serialises committing transactions in
-- PostgreSQL, which would cap exchange throughput. The relay is woken in-process by
-- the writer and polls briefly otherwise (docs/decisions.md).

-- Tell every exchange replica that issuer configuration or keys changed.
CREATE FUNCTION tpx_issuers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tpx_issuers', '');
    RETURN NULL;
END $$;
CREATE TRIGGER issuers_notify AFTER INSERT OR UPDATE OR DELETE ON issuers
    FOR EACH STATEMENT EXECUTE FUNCTION tpx_issuers_notify();
CREATE TRIGGER issuer_keys_notify AFTER INSERT OR UPDATE OR DELETE ON issuer_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tpx_issuers_notify();

-- The public issuers exist by default; their keys arrive through the jwks-refresher.
INSERT INTO issuers (url, kind, max_token_lifetime_seconds)
VALUES ('https://token.actions.githubusercontent.com', 'github', 7200),
       ('https://gitlab.com', 'gitlab', 7200);
