-- Times are UTC RFC 3339 with exactly three fractional digits, so that they
-- sort as text.
CREATE TABLE sessions (
    id               TEXT PRIMARY KEY NOT NULL,   -- UUIDv7
    kiosk_id         TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    ended_at         TEXT,
    end_reason       TEXT,
    room_name        TEXT,
    room_url         TEXT,
    agent_session_id TEXT,
    user_speech_ms   INTEGER NOT NULL DEFAULT 0,
    bot_speech_ms    INTEGER NOT NULL DEFAULT 0,
    -- Set once the ended session has been accepted upstream.
    synced_at        TEXT
) STRICT;

CREATE INDEX sessions_started_at ON sessions (started_at);
CREATE INDEX sessions_unsynced ON sessions (started_at) WHERE synced_at IS NULL;

CREATE TABLE transcripts (
    id          TEXT PRIMARY KEY NOT NULL,        -- UUIDv7
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    seq         INTEGER NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'bot')),
    text        TEXT NOT NULL,
    final       INTEGER NOT NULL CHECK (final IN (0, 1)),
    confidence  REAL,
    spoken_at   TEXT NOT NULL,
    received_at TEXT NOT NULL,
    synced_at   TEXT,
    UNIQUE (session_id, seq)
) STRICT;

CREATE INDEX transcripts_unsynced ON transcripts (received_at) WHERE synced_at IS NULL;
