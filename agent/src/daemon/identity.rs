//! The agent's identity in its state folder and every signature check it makes.
//!
//! - `agent.key`: the agent's Ed25519 secret key (hex), mode 0600; a key file readable by group
//!   or others is refused at load, because anyone who reads it can impersonate the rig.
//! - `identity.json`: agent id, the rigs it fronts, the server URL, the pinned server public key
//!   and its fingerprint (mode 0600 too: it is not secret, but nobody else needs it).
//! - `order_counters.json`: the last accepted order counter per rig, so a restart does not
//!   reopen the door to replaying an order that has not expired yet.
//!
//! Files are written atomically ([`write_atomic`]): temp file, fsync, rename, fsync of the
//! folder, so a crash leaves the old file or the new one, never half of either.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rigfleet_proto::signing::{
    auth_signing_bytes, decode_hex_array, key_fingerprint, OrderKind, SignedOrder,
};
use rigfleet_proto::{AgentId, RigId};
use serde::{Deserialize, Serialize};

/// File name of the secret key in the state folder.
pub const KEY_FILE: &str = "agent.key";
/// File name of the identity record.
pub const IDENTITY_FILE: &str = "identity.json";
/// File name of the per-rig order counters.
pub const COUNTERS_FILE: &str = "order_counters.json";
/// Largest identity or counters file read; a bigger one is corrupt, not something to allocate for.
const MAX_STATE_FILE_BYTES: u64 = 1 << 20;
/// Largest key file read: 64 hex digits and a newline, with room for stray whitespace.
const KEY_FILE_MAX_BYTES: usize = 128;

/// Why an identity could not be created, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The agent has not enrolled in this state folder.
    #[error("no identity in {dir}: run `rigfleet-agent enroll` first")]
    NotEnrolled {
        /// The state folder.
        dir: PathBuf,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but does not hold what it should.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file can be read by others.
    #[error("{path} has mode {mode:o}; it must be readable by its owner only (chmod 600)")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system random source failed.
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
    /// The server presented a key other than the one the enrollment token names.
    #[error("server key fingerprint {actual} does not match the token's {expected}")]
    ServerKeyMismatch {
        /// Fingerprint from the token.
        expected: String,
        /// Fingerprint of the key received.
        actual: String,
    },
}

/// Why a signed order was refused. Each becomes an `order_refused` event the server sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderRefusal {
    /// Out of bounds or unparsable signature field.
    #[error("malformed order: {0}")]
    Malformed(String),
    /// For a rig this agent does not front.
    #[error("order for rig {0} which this agent does not front")]
    UnknownRig(RigId),
    /// The signature does not verify with the pinned key.
    #[error("bad signature")]
    BadSignature,
    /// The counter is not above the last accepted one: a replay or a reordered order.
    #[error("counter {counter} is not above the last accepted {last}")]
    Replayed {
        /// The order's counter.
        counter: u64,
        /// The last accepted counter for that rig.
        last: u64,
    },
    /// Past its expiry by the server's clock as the agent estimates it.
    #[error("expired at {expires_unix_ms} (server time now about {now_server_ms})")]
    Expired {
        /// The order's expiry.
        expires_unix_ms: i64,
        /// The estimated server clock.
        now_server_ms: i64,
    },
}

/// The agent's identity: its key pair, who it is, what it fronts and which server it trusts.
pub struct Identity {
    /// Assigned at enrollment.
    pub agent_id: AgentId,
    /// Rigs this agent fronts (one, or many for a LAN-ASIC gateway).
    pub rig_ids: Vec<RigId>,
    /// The server enrolled with; the agent connects only there.
    pub server_url: String,
    /// TLS trust given at enrollment (a CA file), so `run` needs no extra step; the local
    /// config's `[server]` table overrides it.
    pub tls_ca_file: Option<PathBuf>,
    /// Pinned server certificate (`sha256:<hex>`) given at enrollment.
    pub tls_cert_fingerprint: Option<String>,
    server_key: VerifyingKey,
    key: SigningKey,
}

impl Clone for Identity {
    /// The link's connect task signs with its own copy; a rollover replaces that copy.
    fn clone(&self) -> Self {
        Identity {
            agent_id: self.agent_id.clone(),
            rig_ids: self.rig_ids.clone(),
            server_url: self.server_url.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_fingerprint: self.tls_cert_fingerprint.clone(),
            server_key: self.server_key,
            key: self.key.clone(),
        }
    }
}

impl std::fmt::Debug for Identity {
    /// The secret key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("rig_ids", &self.rig_ids)
            .field("server_url", &self.server_url)
            .field("server_key", &self.server_key_fingerprint())
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

/// `identity.json` as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityRecord {
    agent_id: AgentId,
    rig_ids: Vec<RigId>,
    server_url: String,
    /// Hex of the 32 key bytes.
    server_public_key: String,
    /// `sha256:…` of the key, for people comparing it with the server's.
    server_key_fingerprint: String,
    /// The agent's own public key (hex), for people matching it with the server's record.
    agent_public_key: String,
    /// CA bundle trusted for the server's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_ca_file: Option<PathBuf>,
    /// Pinned server certificate fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_cert_fingerprint: Option<String>,
}

/// Generates a fresh Ed25519 secret key from the operating system's random source.
pub fn generate_key() -> Result<SigningKey, IdentityError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&secret);
    // Don't leave a copy of the secret on the stack longer than needed.
    secret.fill(0);
    Ok(key)
}

/// Checks a server public key received at enrollment against the fingerprint the enrollment
/// token carries (`sha256:<hex>`, case-insensitive), so the agent does not trust the first server
/// that answers.
pub fn check_server_key(
    token_fingerprint: &str,
    received_key: &[u8; 32],
) -> Result<VerifyingKey, IdentityError> {
    let actual = key_fingerprint(received_key);
    if !actual.eq_ignore_ascii_case(token_fingerprint.trim()) {
        return Err(IdentityError::ServerKeyMismatch {
            expected: token_fingerprint.to_string(),
            actual,
        });
    }
    // A fingerprint match on bytes that are not a curve point is still not a usable key.
    VerifyingKey::from_bytes(received_key).map_err(|_| IdentityError::ServerKeyMismatch {
        expected: token_fingerprint.to_string(),
        actual: "not a valid Ed25519 public key".into(),
    })
}

/// Verifies a signed order: bounds, the rig is one of `rig_ids`, the Ed25519 signature over
/// [`SignedOrder::signing_bytes`] with the pinned key (strict verification: no malleable
/// signatures), the counter above `last_counter` (`None`: none accepted yet), and
/// `expires_unix_ms` not before `now_server_ms` (the agent's clock plus the handshake's offset).
///
/// The signature is checked before counter and expiry so that a forged order is reported as
/// forged, not as merely old.
pub fn verify_order(
    kind: OrderKind,
    order: &SignedOrder,
    pinned_key: &VerifyingKey,
    rig_ids: &[RigId],
    last_counter: Option<u64>,
    now_server_ms: i64,
) -> Result<(), OrderRefusal> {
    order
        .validate()
        .map_err(|e| OrderRefusal::Malformed(e.to_string()))?;
    if !rig_ids.contains(&order.rig_id) {
        return Err(OrderRefusal::UnknownRig(order.rig_id.clone()));
    }
    let sig = order
        .signature()
        .map_err(|e| OrderRefusal::Malformed(e.to_string()))?;
    pinned_key
        .verify_strict(&order.signing_bytes(kind), &Signature::from_bytes(&sig))
        .map_err(|_| OrderRefusal::BadSignature)?;
    if let Some(last) = last_counter {
        if order.counter <= last {
            return Err(OrderRefusal::Replayed {
                counter: order.counter,
                last,
            });
        }
    }
    if order.expires_unix_ms < now_server_ms {
        return Err(OrderRefusal::Expired {
            expires_unix_ms: order.expires_unix_ms,
            now_server_ms,
        });
    }
    Ok(())
}

/// The payload of a `key_rollover` order (PROTOCOL.md): `{"new_key":"<hex of 32 bytes>"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloverPayload {
    new_key: String,
}

/// Reads the new server key out of a verified `key_rollover` order's payload. Call only after
/// [`verify_order`] with [`OrderKind::KeyRollover`] accepted the order, then
/// [`Identity::pin_server_key`].
pub fn rollover_key(payload: &str) -> Result<VerifyingKey, OrderRefusal> {
    let p: RolloverPayload = serde_json::from_str(payload)
        .map_err(|e| OrderRefusal::Malformed(format!("key_rollover payload: {e}")))?;
    let bytes = decode_hex_array::<32>(&p.new_key)
        .ok_or_else(|| OrderRefusal::Malformed("new_key is not 32 hex bytes".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| OrderRefusal::Malformed("new_key is not an Ed25519 public key".into()))
}

impl Identity {
    /// A new identity for a freshly generated `key` (the key's public half was registered at
    /// enrollment, which returned the ids) and the verified server key.
    pub fn new(
        agent_id: AgentId,
        rig_ids: Vec<RigId>,
        server_url: String,
        server_key: VerifyingKey,
        key: SigningKey,
    ) -> Self {
        Identity {
            agent_id,
            rig_ids,
            server_url,
            tls_ca_file: None,
            tls_cert_fingerprint: None,
            server_key,
            key,
        }
    }

    /// The agent's public key (sent at enrollment).
    #[cfg(test)]
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The agent's public key as hex.
    pub fn public_key_hex(&self) -> String {
        rigfleet_engine::hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The pinned server key.
    pub fn server_key(&self) -> &VerifyingKey {
        &self.server_key
    }

    /// `sha256:…` of the pinned server key.
    pub fn server_key_fingerprint(&self) -> String {
        key_fingerprint(self.server_key.as_bytes())
    }

    /// The handshake answer: a signature over [`auth_signing_bytes`] for the server's nonce.
    pub fn sign_auth(&self, nonce: &[u8; 32]) -> [u8; 64] {
        let bytes = auth_signing_bytes(nonce, &self.agent_id, self.server_key.as_bytes());
        self.key.sign(&bytes).to_bytes()
    }

    /// [`verify_order`] with this identity's pinned key and rigs.
    pub fn verify_order(
        &self,
        kind: OrderKind,
        order: &SignedOrder,
        last_counter: Option<u64>,
        now_server_ms: i64,
    ) -> Result<(), OrderRefusal> {
        verify_order(
            kind,
            order,
            &self.server_key,
            &self.rig_ids,
            last_counter,
            now_server_ms,
        )
    }

    /// Pins a new server key (after a verified `key_rollover` order) and saves the identity.
    pub fn pin_server_key(
        &mut self,
        new_key: VerifyingKey,
        state_dir: &Path,
    ) -> Result<(), IdentityError> {
        let old = self.server_key;
        self.server_key = new_key;
        if let Err(e) = self.save(state_dir) {
            // Keep memory and disk in agreement: the old key is still what is on disk.
            self.server_key = old;
            return Err(e);
        }
        Ok(())
    }

    /// Writes `agent.key` and `identity.json` (both 0600) into `state_dir`, creating it (0700)
    /// if needed. The key goes first: an identity file without its key would be useless.
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        create_private_dir(state_dir)?;
        // Encoded into one fixed-capacity buffer that is wiped after use, so no stray copy of
        // the secret stays in freed memory.
        let mut secret = self.key.to_bytes();
        let mut key_text = Vec::with_capacity(65);
        for b in secret {
            key_text.push(HEX_DIGITS[usize::from(b >> 4)]);
            key_text.push(HEX_DIGITS[usize::from(b & 0xf)]);
        }
        key_text.push(b'\n');
        secret.fill(0);
        let key_path = state_dir.join(KEY_FILE);
        let written = write_atomic(&key_path, &key_text, 0o600);
        key_text.fill(0);
        written.map_err(|source| IdentityError::Io {
            path: key_path,
            source,
        })?;
        let record = IdentityRecord {
            agent_id: self.agent_id.clone(),
            rig_ids: self.rig_ids.clone(),
            server_url: self.server_url.clone(),
            server_public_key: rigfleet_engine::hex::encode(self.server_key.as_bytes()),
            server_key_fingerprint: self.server_key_fingerprint(),
            agent_public_key: self.public_key_hex(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_fingerprint: self.tls_cert_fingerprint.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&record).expect("BUG: identity record always serialises");
        let path = state_dir.join(IDENTITY_FILE);
        write_atomic(&path, &json, 0o600).map_err(|source| IdentityError::Io { path, source })
    }

    /// Loads the identity from `state_dir`: [`IdentityError::NotEnrolled`] when neither file
    /// exists, a permissions error for a key file others can read, a corrupt error for anything
    /// that does not parse or whose public key does not match the recorded one.
    pub fn load(state_dir: &Path) -> Result<Identity, IdentityError> {
        let key_path = state_dir.join(KEY_FILE);
        let id_path = state_dir.join(IDENTITY_FILE);
        if !key_path.exists() && !id_path.exists() {
            return Err(IdentityError::NotEnrolled {
                dir: state_dir.to_path_buf(),
            });
        }
        let key = load_key(&key_path)?;
        let text = read_bounded(&id_path)?;
        let corrupt = |reason: String| IdentityError::Corrupt {
            path: id_path.clone(),
            reason,
        };
        let record: IdentityRecord =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        record
            .agent_id
            .validate("agent_id")
            .map_err(|e| corrupt(e.to_string()))?;
        for rig in &record.rig_ids {
            rig.validate("rig_ids")
                .map_err(|e| corrupt(e.to_string()))?;
        }
        let server_bytes = decode_hex_array::<32>(&record.server_public_key)
            .ok_or_else(|| corrupt("server_public_key is not 32 hex bytes".into()))?;
        let server_key = VerifyingKey::from_bytes(&server_bytes)
            .map_err(|_| corrupt("server_public_key is not an Ed25519 key".into()))?;
        if key_fingerprint(&server_bytes) != record.server_key_fingerprint {
            return Err(corrupt(
                "server_key_fingerprint does not match server_public_key".into(),
            ));
        }
        if rigfleet_engine::hex::encode(key.verifying_key().as_bytes()) != record.agent_public_key {
            return Err(corrupt(format!(
                "agent_public_key does not match {}",
                key_path.display()
            )));
        }
        Ok(Identity {
            agent_id: record.agent_id,
            rig_ids: record.rig_ids,
            server_url: record.server_url,
            tls_ca_file: record.tls_ca_file,
            tls_cert_fingerprint: record.tls_cert_fingerprint,
            server_key,
            key,
        })
    }
}

fn load_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // Check the open file, not the path, so a swap between check and read changes nothing.
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Read into a buffer sized up front and wiped afterwards (no stray copies of the secret).
    let mut buf = Vec::with_capacity(KEY_FILE_MAX_BYTES + 1);
    let read = (&file)
        .take(KEY_FILE_MAX_BYTES as u64)
        .read_to_end(&mut buf);
    let secret = read
        .ok()
        .and_then(|_| std::str::from_utf8(&buf).ok())
        .and_then(|text| decode_hex_array::<32>(text.trim()));
    buf.fill(0);
    let mut secret = secret.ok_or_else(|| IdentityError::Corrupt {
        path: path.to_path_buf(),
        reason: "not 32 hex bytes".into(),
    })?;
    let key = SigningKey::from_bytes(&secret);
    secret.fill(0);
    Ok(key)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_STATE_FILE_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// The last accepted order counter per rig, persisted in `order_counters.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCounters {
    last: BTreeMap<RigId, u64>,
}

impl OrderCounters {
    /// Loads the counters; a missing file means no order accepted yet.
    pub fn load(state_dir: &Path) -> Result<OrderCounters, IdentityError> {
        let path = state_dir.join(COUNTERS_FILE);
        if !path.exists() {
            return Ok(OrderCounters::default());
        }
        let bytes = read_bounded(&path)?;
        serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// The last accepted counter for `rig`.
    pub fn last(&self, rig: &RigId) -> Option<u64> {
        self.last.get(rig).copied()
    }

    /// Records an accepted order and saves before returning, so the order is applied only once
    /// its counter is durable (a crash then cannot let a replay of it through).
    pub fn accept(
        &mut self,
        rig: &RigId,
        counter: u64,
        state_dir: &Path,
    ) -> Result<(), IdentityError> {
        let previous = self.last.insert(rig.clone(), counter);
        let json = serde_json::to_vec(self).expect("BUG: counters always serialise");
        let path = state_dir.join(COUNTERS_FILE);
        if let Err(source) = write_atomic(&path, &json, 0o600) {
            match previous {
                Some(p) => self.last.insert(rig.clone(), p),
                None => self.last.remove(rig),
            };
            return Err(IdentityError::Io { path, source });
        }
        Ok(())
    }
}

/// Creates `dir` (and parents) with mode 0700 when missing; an existing folder is left as is.
pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Replaces `path` with `bytes` atomically: a temp file in the same folder created with `mode`
/// (so the secret is never briefly readable), written and fsynced, renamed over `path`, then the
/// folder fsynced so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A temp file left by a crash of a process with the same pid: stale, remove it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; never widened, but set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_engine::hex::encode as hex;

    const NOW: i64 = 1_764_280_000_000;

    fn server_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn identity() -> Identity {
        Identity::new(
            "agt-1".into(),
            vec!["rig-1".into(), "rig-2".into()],
            "https://fleet.example:8443".into(),
            server_key().verifying_key(),
            generate_key().expect("random"),
        )
    }

    fn order(rig: &str, counter: u64, expires: i64, payload: &str, by: &SigningKey) -> SignedOrder {
        let mut o = SignedOrder {
            rig_id: rig.into(),
            counter,
            expires_unix_ms: expires,
            payload: payload.into(),
            sig: String::new(),
        };
        o.sig = hex(&by.sign(&o.signing_bytes(OrderKind::SetConfig)).to_bytes());
        o
    }

    fn good() -> SignedOrder {
        order("rig-1", 5, NOW + 60_000, r#"{"version":1}"#, &server_key())
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn round_trip_through_the_state_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let id = identity();
        id.save(&state).expect("save");
        assert_eq!(mode_of(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode_of(&state.join(IDENTITY_FILE)), 0o600);
        assert_eq!(mode_of(&state), 0o700);
        let back = Identity::load(&state).expect("load");
        assert_eq!(back.agent_id, id.agent_id);
        assert_eq!(back.rig_ids, id.rig_ids);
        assert_eq!(back.server_url, id.server_url);
        assert_eq!(back.server_key(), id.server_key());
        assert_eq!(back.public_key(), id.public_key());
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(&state)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // The secret never shows in Debug.
        let dbg = format!("{back:?}");
        assert!(!dbg.contains(&hex(&back.key.to_bytes())), "{dbg}");
    }

    #[test]
    fn load_errors_are_specific() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::NotEnrolled { .. })
        ));
        identity().save(dir.path()).expect("save");
        let key = dir.path().join(KEY_FILE);

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Identity::load(dir.path()).expect_err("world-readable key");
        assert!(
            matches!(err, IdentityError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::InsecurePermissions { .. })
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        write_atomic(&key, b"not hex", 0o600).expect("write");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
        // A valid key that is not the recorded one.
        write_atomic(&key, hex(&[9u8; 32]).as_bytes(), 0o600).expect("write");
        let err = Identity::load(dir.path()).expect_err("key mismatch");
        assert!(err.to_string().contains("agent_public_key"), "{err}");

        let id_path = dir.path().join(IDENTITY_FILE);
        identity().save(dir.path()).expect("save");
        write_atomic(&id_path, b"{\"agent_id\":", 0o600).expect("write");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
        std::fs::remove_file(&id_path).expect("rm");
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Io { .. })
        ));
    }

    #[test]
    fn auth_signature_verifies_with_the_agent_key_over_the_protocol_bytes() {
        let id = identity();
        let nonce = [3u8; 32];
        let sig = Signature::from_bytes(&id.sign_auth(&nonce));
        let bytes = auth_signing_bytes(&nonce, &id.agent_id, id.server_key().as_bytes());
        assert!(id.public_key().verify_strict(&bytes, &sig).is_ok());
        // Another nonce (a replayed answer) does not verify.
        let other = auth_signing_bytes(&[4u8; 32], &id.agent_id, id.server_key().as_bytes());
        assert!(id.public_key().verify_strict(&other, &sig).is_err());
    }

    #[test]
    fn accepts_a_good_order() {
        let id = identity();
        assert_eq!(
            id.verify_order(OrderKind::SetConfig, &good(), None, NOW),
            Ok(())
        );
        assert_eq!(
            id.verify_order(OrderKind::SetConfig, &good(), Some(4), NOW),
            Ok(())
        );
    }

    #[test]
    fn tampered_orders_are_refused() {
        let id = identity();
        let check = |o: &SignedOrder| id.verify_order(OrderKind::SetConfig, o, Some(1), NOW);
        let mut o = good();
        o.payload = r#"{"version":2}"#.into();
        assert_eq!(check(&o), Err(OrderRefusal::BadSignature));
        let mut o = good();
        o.rig_id = "rig-2".into();
        assert_eq!(check(&o), Err(OrderRefusal::BadSignature));
        let mut o = good();
        o.counter += 1;
        assert_eq!(check(&o), Err(OrderRefusal::BadSignature));
        let mut o = good();
        o.expires_unix_ms += 1;
        assert_eq!(check(&o), Err(OrderRefusal::BadSignature));
        // Signed as a set_config, presented as a command.
        assert_eq!(
            id.verify_order(OrderKind::Command, &good(), None, NOW),
            Err(OrderRefusal::BadSignature)
        );
        let mut o = good();
        o.sig = "zz".into();
        assert!(matches!(check(&o), Err(OrderRefusal::Malformed(_))));
    }

    #[test]
    fn wrong_key_unknown_rig_replay_and_expiry_are_refused() {
        let id = identity();
        let forged = order(
            "rig-1",
            5,
            NOW + 1,
            "{}",
            &SigningKey::from_bytes(&[8u8; 32]),
        );
        assert_eq!(
            id.verify_order(OrderKind::SetConfig, &forged, None, NOW),
            Err(OrderRefusal::BadSignature)
        );
        let other_rig = order("rig-9", 5, NOW + 1, "{}", &server_key());
        assert_eq!(
            id.verify_order(OrderKind::SetConfig, &other_rig, None, NOW),
            Err(OrderRefusal::UnknownRig("rig-9".into()))
        );
        assert_eq!(
            id.verify_order(OrderKind::SetConfig, &good(), Some(5), NOW),
            Err(OrderRefusal::Replayed {
                counter: 5,
                last: 5
            })
        );
        assert!(matches!(
            id.verify_order(OrderKind::SetConfig, &good(), Some(6), NOW),
            Err(OrderRefusal::Replayed { .. })
        ));
        assert!(matches!(
            id.verify_order(OrderKind::SetConfig, &good(), None, NOW + 60_001),
            Err(OrderRefusal::Expired { .. })
        ));
        // Exactly at the expiry instant it is still valid.
        assert_eq!(
            id.verify_order(OrderKind::SetConfig, &good(), None, NOW + 60_000),
            Ok(())
        );
    }

    #[test]
    fn no_mutation_of_a_signed_order_is_accepted() {
        // A small deterministic mutation harness (xorshift): each round changes one thing of a
        // good order, the way a forger, a replaying proxy or a confused server would.
        let id = identity();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let mut o = good();
            let mut kind = OrderKind::SetConfig;
            let mut last = Some(4);
            let mut now = NOW;
            let r = next();
            match round % 8 {
                0 => {
                    let i = (r as usize) % o.payload.len();
                    let mut bytes = o.payload.clone().into_bytes();
                    bytes[i] = bytes[i].wrapping_add(1 + (r >> 32) as u8 % 0x7e) & 0x7f;
                    o.payload = String::from_utf8_lossy(&bytes).into_owned();
                }
                1 => {
                    let i = (r as usize) % o.sig.len();
                    let mut sig = o.sig.clone().into_bytes();
                    sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
                    o.sig = String::from_utf8(sig).expect("ascii");
                }
                2 => o.counter = o.counter.wrapping_add(1 + r % 1000),
                3 => o.expires_unix_ms += 1 + (r % 1_000_000) as i64,
                4 => o.rig_id = ["rig-2", "rig-9", "rig-1x"][(r % 3) as usize].into(),
                5 => kind = [OrderKind::Command, OrderKind::KeyRollover][(r % 2) as usize],
                6 => last = Some(5 + r % 100),
                _ => now = NOW + 60_001 + (r % 1_000_000) as i64,
            }
            assert!(
                id.verify_order(kind, &o, last, now).is_err(),
                "round {round} accepted {o:?}"
            );
        }
    }

    #[test]
    fn counters_persist_and_refuse_replays_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = identity();
        let mut counters = OrderCounters::load(dir.path()).expect("empty");
        let rig: RigId = "rig-1".into();
        assert_eq!(counters.last(&rig), None);
        id.verify_order(OrderKind::SetConfig, &good(), counters.last(&rig), NOW)
            .expect("first time");
        counters
            .accept(&rig, good().counter, dir.path())
            .expect("save");
        let reloaded = OrderCounters::load(dir.path()).expect("load");
        assert_eq!(reloaded, counters);
        assert!(matches!(
            id.verify_order(OrderKind::SetConfig, &good(), reloaded.last(&rig), NOW),
            Err(OrderRefusal::Replayed { .. })
        ));
        assert_eq!(mode_of(&dir.path().join(COUNTERS_FILE)), 0o600);
    }

    #[test]
    fn server_key_is_checked_against_the_token_fingerprint() {
        let key = server_key().verifying_key();
        let fp = key_fingerprint(key.as_bytes());
        assert_eq!(check_server_key(&fp, key.as_bytes()).expect("match"), key);
        assert!(check_server_key(
            &fp.to_uppercase().replace("SHA256", "sha256"),
            key.as_bytes()
        )
        .is_ok());
        let other = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
        assert!(matches!(
            check_server_key(&fp, other.as_bytes()),
            Err(IdentityError::ServerKeyMismatch { .. })
        ));
    }

    #[test]
    fn rollover_pins_and_persists_the_new_server_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut id = identity();
        id.save(dir.path()).expect("save");
        let new_server = SigningKey::from_bytes(&[11u8; 32]);
        let payload = format!(
            r#"{{"new_key":"{}"}}"#,
            hex(new_server.verifying_key().as_bytes())
        );
        let mut o = order("rig-1", 9, NOW + 1, &payload, &server_key());
        o.sig = hex(&server_key()
            .sign(&o.signing_bytes(OrderKind::KeyRollover))
            .to_bytes());
        id.verify_order(OrderKind::KeyRollover, &o, None, NOW)
            .expect("signed by the current key");
        let new_key = rollover_key(&o.payload).expect("payload");
        assert_eq!(new_key, new_server.verifying_key());
        assert!(matches!(
            rollover_key(r#"{"new_key":"abcd"}"#),
            Err(OrderRefusal::Malformed(_))
        ));
        assert!(matches!(
            rollover_key(r#"{"new_key":"00","extra":1}"#),
            Err(OrderRefusal::Malformed(_))
        ));
        id.pin_server_key(new_key, dir.path()).expect("pin");
        let back = Identity::load(dir.path()).expect("load");
        assert_eq!(back.server_key(), &new_server.verifying_key());
        // Orders by the old key are now refused, by the new key accepted.
        assert_eq!(
            back.verify_order(OrderKind::SetConfig, &good(), None, NOW),
            Err(OrderRefusal::BadSignature)
        );
        let o = order("rig-1", 6, NOW + 1, "{}", &new_server);
        assert_eq!(
            back.verify_order(OrderKind::SetConfig, &o, None, NOW),
            Ok(())
        );
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate_key().expect("random");
        let b = generate_key().expect("random");
        assert_ne!(a.to_bytes(), b.to_bytes());
    }
}
