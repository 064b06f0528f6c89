-- Fleet control (issue 12): a rig's desired config is built from layers — its profile (its own,
-- else its group's), its group's overrides, its own overrides — and rollouts and command
-- batches are recorded per rig. Every rig's desired config from before this migration becomes
-- its rig overrides, unchanged, so the built config has the same content hash and no rig gets
-- a new version on upgrade.

-- Profiles: a layer (JSON of the same shape as a desired config, every field optional except
-- the algorithm; device entries with device_id "*" apply to every device of the rig).
ALTER TABLE profiles ADD COLUMN description    TEXT    NOT NULL DEFAULT '';
ALTER TABLE profiles ADD COLUMN updated_at_ms  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE profiles ADD COLUMN updated_by     TEXT;

-- Groups as objects: a default profile, optionally one profile per algorithm (what an algorithm
-- switch and profit switching apply), and overrides (a layer).
ALTER TABLE groups ADD COLUMN profile_id       INTEGER REFERENCES profiles (id);
ALTER TABLE groups ADD COLUMN overrides_json   TEXT    NOT NULL DEFAULT '{}';
ALTER TABLE groups ADD COLUMN description      TEXT    NOT NULL DEFAULT '';
CREATE TABLE group_algorithm_profiles (
    group_name  TEXT    NOT NULL REFERENCES groups (name) ON DELETE CASCADE ON UPDATE CASCADE,
    algorithm   TEXT    NOT NULL,
    profile_id  INTEGER NOT NULL REFERENCES profiles (id),
    PRIMARY KEY (group_name, algorithm)
);
CREATE INDEX group_algorithm_profiles_profile ON group_algorithm_profiles (profile_id);

-- Every group a rig names exists as an object.
INSERT INTO groups (name, created_at_ms)
SELECT DISTINCT group_name, 0 FROM rigs
WHERE group_name IS NOT NULL AND group_name NOT IN (SELECT name FROM groups);

-- A rig's own profile (overrides its group's), its overrides layer, and its physical place.
ALTER TABLE rigs ADD COLUMN profile_id      INTEGER REFERENCES profiles (id);
ALTER TABLE rigs ADD COLUMN overrides_json  TEXT    NOT NULL DEFAULT '{}';
ALTER TABLE rigs ADD COLUMN site            TEXT    NOT NULL DEFAULT '';
ALTER TABLE rigs ADD COLUMN room            TEXT    NOT NULL DEFAULT '';
ALTER TABLE rigs ADD COLUMN rack            TEXT    NOT NULL DEFAULT '';
ALTER TABLE rigs ADD COLUMN slot            TEXT    NOT NULL DEFAULT '';
CREATE INDEX rigs_profile ON rigs (profile_id);

-- The upgrade: each rig's current desired config becomes its overrides (pool passwords stay
-- sealed as they were; the version is not part of a layer).
UPDATE rigs SET overrides_json = (
    SELECT json_remove(d.config_json, '$.version') FROM desired_configs d
    WHERE d.rig_id = rigs.id ORDER BY d.version DESC LIMIT 1
)
WHERE EXISTS (SELECT 1 FROM desired_configs d WHERE d.rig_id = rigs.id);

-- Rollouts: one action that changes the desired config of a target of rigs.
-- state: running, halted, completed, rolled_back, cancelled.
CREATE TABLE rollouts (
    id             INTEGER PRIMARY KEY,
    kind           TEXT    NOT NULL DEFAULT 'config',
    state          TEXT    NOT NULL,
    target_json    TEXT    NOT NULL,
    action_json    TEXT    NOT NULL,
    stage_json     TEXT,
    -- The layers as they were before the rollout changed them (for roll-back).
    undo_json      TEXT    NOT NULL DEFAULT '{}',
    summary        TEXT    NOT NULL DEFAULT '',
    created_by     TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER
);
CREATE INDEX rollouts_state ON rollouts (state, id);

-- Per rig: wave (0 = first), state pending / sent / applied / failed / rolled_back / skipped,
-- the version it had before and the version the rollout gave it.
CREATE TABLE rollout_rigs (
    rollout_id       INTEGER NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    rig_id           INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    wave             INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL,
    previous_version INTEGER,
    target_version   INTEGER,
    target_hash      TEXT,
    error            TEXT,
    updated_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, rig_id)
);
CREATE INDEX rollout_rigs_rig ON rollout_rigs (rig_id, target_version);

-- Command batches: one command to a target, with per-rig results; queued commands for offline
-- rigs expire instead of firing days later.
CREATE TABLE command_batches (
    id             INTEGER PRIMARY KEY,
    command_json   TEXT    NOT NULL,
    target_json    TEXT    NOT NULL,
    queue_offline  BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at_ms  INTEGER NOT NULL,
    created_by     TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
-- state: queued, sent, ok, failed, refused, expired.
CREATE TABLE command_batch_rigs (
    batch_id       INTEGER NOT NULL REFERENCES command_batches (id) ON DELETE CASCADE,
    rig_id         INTEGER NOT NULL REFERENCES rigs (id) ON DELETE CASCADE,
    state          TEXT    NOT NULL,
    command_uid    TEXT,
    output         TEXT,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (batch_id, rig_id)
);
CREATE INDEX command_batch_rigs_queued ON command_batch_rigs (rig_id, state);

-- Roles as permission sets: the three built-in ones stay in users.role; a user may instead hold
-- a custom role, optionally limited to some groups. API tokens may carry an explicit list.
CREATE TABLE roles (
    name           TEXT    PRIMARY KEY,
    permissions    TEXT    NOT NULL,
    groups_json    TEXT,
    created_at_ms  INTEGER NOT NULL
);
ALTER TABLE users ADD COLUMN custom_role TEXT REFERENCES roles (name);
ALTER TABLE api_tokens ADD COLUMN permissions TEXT;

-- The audit log keeps what a change replaced and what it wrote (JSON, secrets left out).
ALTER TABLE audit_log ADD COLUMN before_json TEXT;
ALTER TABLE audit_log ADD COLUMN after_json  TEXT;
