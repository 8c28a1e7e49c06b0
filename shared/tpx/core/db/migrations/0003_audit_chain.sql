-- Tamper evidence: every relayed event carries a hash-chain link.
-- chainhash = SHA-256(previous chainhash || canonical event), in sequence order.
-- The head of the chain lives in its own row so purging old outbox rows never
-- restarts the sequence or the chain.
ALTER TABLE outbox ADD COLUMN chainhash bytea;

CREATE TABLE event_chain (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    sequence    bigint NOT NULL,
    chainhash   bytea NOT NULL
);
INSERT INTO event_chain (sequence, chainhash)
SELECT coalesce(max(sequence), 0), '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
FROM outbox;
