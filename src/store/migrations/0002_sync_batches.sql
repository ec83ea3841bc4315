-- Upload batches: a batch's rows are fixed when it is first built, so a
-- retry sends exactly the same document under the same Idempotency-Key.
ALTER TABLE sessions ADD COLUMN batch_id TEXT;
ALTER TABLE transcripts ADD COLUMN batch_id TEXT;

CREATE TABLE sync_batches (
    id                 TEXT PRIMARY KEY NOT NULL,  -- UUIDv7, the Idempotency-Key
    created_at         TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'parked')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_attempt_at    TEXT,
    last_error         TEXT,
    -- For a parked batch: which sync settings refused it. Changed settings
    -- put it back in the queue.
    parked_fingerprint TEXT
) STRICT;

CREATE INDEX transcripts_batch ON transcripts (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX sessions_batch ON sessions (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX transcripts_unbatched ON transcripts (received_at)
    WHERE synced_at IS NULL AND batch_id IS NULL;
CREATE INDEX transcripts_synced ON transcripts (synced_at) WHERE synced_at IS NOT NULL;
