-- Sessions whose transcript is fetched from Daily after they end (SIP mode).
-- One row per session; a row is deleted in the same transaction that stores
-- the fetched lines, so a fetch is stored exactly once. Parked rows stay
-- for technicians to see why.
CREATE TABLE transcript_fetches (
    session_id      TEXT PRIMARY KEY NOT NULL,  -- sessions.id (no foreign key:
                                                -- a parked row may outlive a purged session)
    room_name       TEXT NOT NULL,
    room_id         TEXT NOT NULL,               -- Daily's id for the room
    display_name    TEXT NOT NULL,               -- the kiosk's name in the room
    started_at      TEXT NOT NULL,
    enqueued_at     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'parked')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT
) STRICT;

CREATE INDEX transcript_fetches_due ON transcript_fetches (next_attempt_at)
    WHERE state = 'pending';
