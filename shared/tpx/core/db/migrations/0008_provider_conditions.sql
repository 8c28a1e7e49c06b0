-- Three more issuer kinds (Google Cloud, Buildkite, CircleCI), and the conditions only one
-- provider has (GitHub: the reusable workflow a job must run; CircleCI: contexts, VCS origin and
-- ref, pipeline definition), kept as one JSON object per publisher that its provider reads and
-- checks (tpx.core.providers.*), rather than a column per provider's option.
ALTER TABLE issuers DROP CONSTRAINT issuers_kind_check;
ALTER TABLE issuers ADD CONSTRAINT issuers_kind_check
    CHECK (kind IN ('github', 'gitlab', 'google', 'buildkite', 'circleci'));
ALTER TABLE publishers DROP CONSTRAINT publishers_provider_check;
ALTER TABLE publishers ADD CONSTRAINT publishers_provider_check
    CHECK (provider IN ('github', 'gitlab', 'google', 'buildkite', 'circleci'));
ALTER TABLE publishers ADD COLUMN conditions jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(conditions) = 'object');
