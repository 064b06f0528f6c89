-- Fingerprint (sha256:<hex>) of the server key the agent last proved itself against, so an
-- operator can tell when every rig has rolled over to a rotated key. NULL: not seen since.
ALTER TABLE agents ADD COLUMN pinned_server_key TEXT;
