-- Operators' accounts (issue 11, items 13 and 15): second-factor failures that a correct
-- password does not reset, the last TOTP step used (a code is good once), and failed logins
-- per (user name, client address), kept here so that replicas share them.

-- Wrong second-factor codes in a row (a right code sets it back to 0), the time until which
-- the second factor refuses every code, and the highest 30-second step a code was accepted for.
ALTER TABLE users ADD COLUMN totp_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN totp_locked_until_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT -1;

-- `name` is `user:<name as typed>` or `any` (every name from that address); `address` is the
-- client's IPv4 address or IPv6 /64.
CREATE TABLE login_failures (
    name             TEXT    NOT NULL,
    address          TEXT    NOT NULL,
    failures         BIGINT  NOT NULL,
    last_failure_ms  BIGINT NOT NULL,
    PRIMARY KEY (name, address)
);
CREATE INDEX login_failures_last ON login_failures (last_failure_ms);
