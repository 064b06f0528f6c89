-- rigfleet schema, SQLite dialect. Same meaning as ../postgres/0001_initial.sql.
-- Times are Unix milliseconds (INTEGER); booleans are 0/1; ids are INTEGER PRIMARY KEY.
-- Rigs and agents use AUTOINCREMENT so a deleted id is never handed out again (the telemetry
-- writer caches per-rig state by id).

CREATE TABLE users (
    id                  INTEGER PRIMARY KEY,
    username            TEXT    NOT NULL UNIQUE,
    password_hash       TEXT    NOT NULL,
    role                TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    totp_secret         TEXT,
    totp_enabled_at_ms  INTEGER,
    created_at_ms       INTEGER NOT NULL
);

CREATE TABLE sessions (
    id_hash        TEXT    PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token     TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at_ms);

CREATE TABLE api_tokens (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    token_hash     TEXT    NOT NULL UNIQUE,
    scopes         TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    last_used_ms   INTEGER,
    revoked        BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE enrollment_tokens (
    id                 INTEGER PRIMARY KEY,
    token_id           TEXT    NOT NULL UNIQUE,
    secret_sha256      TEXT    NOT NULL,
    max_uses           INTEGER,
    uses               INTEGER NOT NULL DEFAULT 0,
    expires_at_ms      INTEGER,
    group_name         TEXT,
    requires_approval  BOOLEAN NOT NULL DEFAULT FALSE,
    note               TEXT    NOT NULL DEFAULT '',
    revoked            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms      INTEGER NOT NULL
);

CREATE TABLE agents (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_uid        TEXT    NOT NULL UNIQUE,
    public_key       TEXT    NOT NULL UNIQUE,
    hostname         TEXT    NOT NULL,
    agent_version    TEXT    NOT NULL,
    enroll_token_id  TEXT,
    revoked          BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms    INTEGER NOT NULL,
    last_seen_ms     INTEGER
);

CREATE TABLE groups (
    name           TEXT    PRIMARY KEY,
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE rigs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    rig_uid           TEXT    NOT NULL UNIQUE,
    agent_id          INTEGER NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name              TEXT    NOT NULL,
    group_name        TEXT,
    pending_approval  BOOLEAN NOT NULL DEFAULT FALSE,
    flagged           TEXT,
    created_at_ms     INTEGER NOT NULL,
    last_seen_ms      INTEGER,
    -- Durable telemetry high-water mark: every sample with seq <= last_seq is committed.
    last_seq          INTEGER,
    order_counter     INTEGER NOT NULL DEFAULT 0,
    desired_version   INTEGER NOT NULL DEFAULT 0,
    applied_version   INTEGER,
    applied_hash      TEXT,
    applied_ok        BOOLEAN,
    applied_error     TEXT,
    applied_at_ms     INTEGER
);
CREATE INDEX rigs_agent ON rigs (agent_id);
CREATE INDEX rigs_group ON rigs (group_name);

CREATE TABLE rig_tags (
    rig_id  INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    tag     TEXT    NOT NULL,
    PRIMARY KEY (rig_id, tag)
) WITHOUT ROWID;
CREATE INDEX rig_tags_tag ON rig_tags (tag);

-- slot: small per-rig number that packed telemetry uses instead of the device's string id.
CREATE TABLE devices (
    id             INTEGER PRIMARY KEY,
    rig_id         INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    device_uid     TEXT    NOT NULL,
    slot           SMALLINT NOT NULL,
    kind           TEXT    NOT NULL DEFAULT '',
    model          TEXT    NOT NULL DEFAULT '',
    algorithms     TEXT    NOT NULL DEFAULT '',
    first_seen_ms  INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL,
    UNIQUE (rig_id, device_uid),
    UNIQUE (rig_id, slot)
);

CREATE TABLE profiles (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    config_json  TEXT    NOT NULL,
    is_default   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX profiles_one_default ON profiles (is_default) WHERE is_default;

-- History of desired configs; the current one is the highest version of the rig.
CREATE TABLE desired_configs (
    rig_id         INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    version        INTEGER NOT NULL,
    content_hash   TEXT    NOT NULL,
    config_json    TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    created_by     TEXT,
    PRIMARY KEY (rig_id, version)
);

CREATE TABLE commands (
    id              INTEGER PRIMARY KEY,
    rig_id          INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    command_uid     TEXT    NOT NULL UNIQUE,
    command_json    TEXT    NOT NULL,
    created_by      TEXT,
    created_at_ms   INTEGER NOT NULL,
    finished_at_ms  INTEGER,
    ok              BOOLEAN,
    output          TEXT
);
CREATE INDEX commands_rig ON commands (rig_id, id);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    rig_id    INTEGER REFERENCES rigs (id) ON DELETE CASCADE,
    time_ms   INTEGER NOT NULL,
    severity  TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    message   TEXT    NOT NULL
);
CREATE INDEX events_rig ON events (rig_id, id);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY,
    time_ms  INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    target   TEXT    NOT NULL,
    detail   TEXT    NOT NULL
);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE job_locks (
    name           TEXT    PRIMARY KEY,
    holder         TEXT    NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);

-- Telemetry: one row per rig and time, device values packed (server/src/db/packed.rs).
CREATE TABLE telemetry_raw (
    rig_id  INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    ts_ms   INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (rig_id, ts_ms)
) WITHOUT ROWID;

-- ts_ms is the bucket start; samples is how many raw samples the bucket holds.
CREATE TABLE telemetry_1m (
    rig_id   INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    ts_ms    INTEGER NOT NULL,
    samples  INTEGER NOT NULL,
    data     BLOB    NOT NULL,
    PRIMARY KEY (rig_id, ts_ms)
) WITHOUT ROWID;

CREATE TABLE telemetry_1h (
    rig_id   INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    ts_ms    INTEGER NOT NULL,
    samples  INTEGER NOT NULL,
    data     BLOB    NOT NULL,
    PRIMARY KEY (rig_id, ts_ms)
) WITHOUT ROWID;

-- Minutes that received samples since they were last rolled up (written in the same
-- transaction as the samples, so a late sample is never missed by the rollup job).
CREATE TABLE rollup_pending (
    rig_id     INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    minute_ms  INTEGER NOT NULL,
    PRIMARY KEY (rig_id, minute_ms)
) WITHOUT ROWID;

-- Hours whose minutes changed since the hour was last rolled up.
CREATE TABLE rollup_pending_hour (
    rig_id   INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    hour_ms  INTEGER NOT NULL,
    PRIMARY KEY (rig_id, hour_ms)
) WITHOUT ROWID;
