-- The relay records how far the broker has confirmed as one number, the chain
-- head's `published_sequence`, instead of stamping `published_at` on every row:
-- one write per batch instead of one per event (and one index less to keep up).
-- Rows up to it are published: the relay publishes in sequence order and only
-- ever records a confirmed prefix.
--
-- Compatible with the previous release during a rollout: its relays still read
-- and stamp `published_at`, which stays (no longer written, dropped later); a
-- mix of old and new leaders only republishes some events, which consumers
-- already deduplicate by id.
ALTER TABLE event_chain ADD COLUMN published_sequence bigint NOT NULL DEFAULT 0;
UPDATE event_chain SET published_sequence = coalesce(
    (SELECT max(sequence) FROM outbox WHERE published_at IS NOT NULL), 0);
DROP INDEX outbox_unpublished;
-- Purging by age reads the oldest rows by sequence (the unique index) and their event time.
COMMENT ON COLUMN outbox.published_at IS 'not written since migration 0007; see event_chain.published_sequence';
