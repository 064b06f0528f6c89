-- Telemetry streams: an acknowledgement is a promise (issue 11).
--
-- Every agent queue is a stream with its own id (made when the queue is created), and seqs are
-- only unique within a stream: an agent whose queue was reset starts a new stream at seq 1.
-- `committed_seq` is the mark the server acknowledges: every seq at or below it is stored (or
-- was reported dropped by the agent), never a mark with a hole below it. Rows of agents that
-- predate streams belong to the rig's legacy stream, whose id is the empty string.
CREATE TABLE telemetry_streams (
    id             INTEGER PRIMARY KEY,
    rig_id         INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    stream_uid     TEXT    NOT NULL,
    committed_seq  INTEGER NOT NULL DEFAULT 0,
    -- Seqs the agent reported dropped (its queue overflowed) that the mark moved past.
    dropped        INTEGER NOT NULL DEFAULT 0,
    created_at_ms  INTEGER NOT NULL,
    UNIQUE (rig_id, stream_uid)
);

INSERT INTO telemetry_streams (rig_id, stream_uid, committed_seq, created_at_ms)
SELECT id, '', COALESCE(last_seq, 0), created_at_ms FROM rigs;

-- Raw samples keyed by (rig, stream, seq): times are data, not keys. ts_ms is the sample's time
-- on the server's clock (the agent's time corrected by the handshake's offset, or the receive
-- time when that is more than the skew bound off); agent_ts_ms is the time as the agent sent it.
CREATE TABLE telemetry_raw_v3 (
    rig_id       INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    stream_id    INTEGER NOT NULL REFERENCES telemetry_streams (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    ts_ms        INTEGER NOT NULL,
    agent_ts_ms  INTEGER NOT NULL,
    recv_ms      INTEGER NOT NULL,
    -- 1: the agent's time was more than the skew bound off and ts_ms is the receive time.
    time_flag    INTEGER NOT NULL DEFAULT 0,
    data         BLOB    NOT NULL,
    PRIMARY KEY (rig_id, stream_id, seq)
) WITHOUT ROWID;

INSERT OR IGNORE INTO telemetry_raw_v3
    (rig_id, stream_id, seq, ts_ms, agent_ts_ms, recv_ms, time_flag, data)
SELECT r.rig_id, s.id, r.seq, r.ts_ms, r.ts_ms, r.ts_ms, 0, r.data
FROM telemetry_raw r JOIN telemetry_streams s ON s.rig_id = r.rig_id AND s.stream_uid = '';

DROP TABLE telemetry_raw;
ALTER TABLE telemetry_raw_v3 RENAME TO telemetry_raw;
CREATE INDEX telemetry_raw_time ON telemetry_raw (rig_id, ts_ms);

-- Per rig: raw rows older than pruned_before_ms are gone (retention), and base_data is the newest
-- raw sample that retention removed, the baseline of the first delta after it.
CREATE TABLE telemetry_pruned (
    rig_id            INTEGER PRIMARY KEY REFERENCES rigs (id) ON DELETE CASCADE,
    pruned_before_ms  INTEGER NOT NULL,
    base_ts_ms        INTEGER,
    base_data         BLOB
);

-- A 1-minute bucket whose raw rows retention removed: samples that arrive for it later are
-- merged into it (they cannot be recomputed from raw any more). Buckets of old databases whose
-- minute has no raw rows left are such buckets.
ALTER TABLE telemetry_1m ADD COLUMN raw_pruned BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE telemetry_1m SET raw_pruned = TRUE
WHERE NOT EXISTS (
    SELECT 1 FROM telemetry_raw r
    WHERE r.rig_id = telemetry_1m.rig_id AND r.ts_ms >= telemetry_1m.ts_ms AND r.ts_ms < telemetry_1m.ts_ms + 60000
);
