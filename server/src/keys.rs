//! The server's Ed25519 signing key: it signs every order (`set_config`, `command`,
//! `key_rollover`), and agents pin its public key at enrollment (tokens carry its fingerprint).
//! It lives in the data folder as `server.key` (hex, 0600), made on first start.
//!
//! Rotation keeps the replaced key as `server.key.previous` until the operator retires it:
//! rigs that still pin the previous key prove themselves against it, get a `key_rollover`
//! order signed by it, and pin the new one — no rig has to be enrolled again, and tokens made
//! before the rotation still enroll (the new rig then rolls over on its first connection).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rigfleet_proto::signing::{key_fingerprint, order_signing_bytes, OrderKind, SignedOrder};
use rigfleet_proto::RigId;

use crate::files::{read_private, write_atomic};

/// File name of the key in the data folder.
pub const KEY_FILE: &str = "server.key";

/// File name of the key a rotation replaced, kept until retired.
pub const PREVIOUS_KEY_FILE: &str = "server.key.previous";

/// Why the key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("{path} does not hold a 64-hex-digit Ed25519 key")]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A rotation would drop a previous key that rigs may still pin.
    #[error(
        "a previous key ({0}) is still kept for rigs that have not rolled over; run `key retire-previous` first, or rotate with --force"
    )]
    PreviousKept(String),
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Fingerprint of the key now kept as the previous one.
    pub previous: String,
    /// Fingerprint of the new signing key.
    pub current: String,
}

/// Makes a new signing key and keeps the old one as the previous key. Refuses when a previous
/// key is still kept, unless `force` (rigs that pin that older key then need enrolling again).
/// The running server picks the new key up at its next start.
pub fn rotate(data_dir: &Path, force: bool) -> Result<Rotation, KeyError> {
    let current = ServerKey::load_or_create(data_dir)?;
    if let Some(previous) = ServerKey::load_previous(data_dir)? {
        if previous.fingerprint() != current.fingerprint() && !force {
            return Err(KeyError::PreviousKept(previous.fingerprint()));
        }
    }
    let fresh = ServerKey::generate()?;
    // The previous file is written first: a crash between the two writes leaves the old key in
    // both files, which loads as "no rotation happened".
    current.save(&data_dir.join(PREVIOUS_KEY_FILE))?;
    fresh.save(&data_dir.join(KEY_FILE))?;
    Ok(Rotation {
        previous: current.fingerprint(),
        current: fresh.fingerprint(),
    })
}

/// Forgets the previous key; rigs that still pin it are refused from now on. Returns its
/// fingerprint, or `None` when there was none.
pub fn retire_previous(data_dir: &Path) -> Result<Option<String>, KeyError> {
    let path = data_dir.join(PREVIOUS_KEY_FILE);
    let Some(previous) = ServerKey::load_previous(data_dir)? else {
        return Ok(None);
    };
    std::fs::remove_file(&path).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some(previous.fingerprint()))
}

/// The server's key pair.
pub struct ServerKey {
    key: SigningKey,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ServerKey {
    /// Loads `server.key` from `data_dir`, or makes and saves one when there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<ServerKey, KeyError> {
        let path = data_dir.join(KEY_FILE);
        if let Some(key) = Self::read(&path)? {
            return Ok(key);
        }
        let key = Self::generate()?;
        crate::files::create_private_dir(data_dir).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        key.save(&path)?;
        Ok(key)
    }

    /// The key a rotation replaced, when one is kept (and differs from the current one).
    pub fn load_previous(data_dir: &Path) -> Result<Option<ServerKey>, KeyError> {
        let Some(previous) = Self::read(&data_dir.join(PREVIOUS_KEY_FILE))? else {
            return Ok(None);
        };
        match Self::read(&data_dir.join(KEY_FILE))? {
            Some(current) if current.fingerprint_bytes() == previous.fingerprint_bytes() => {
                Ok(None)
            }
            _ => Ok(Some(previous)),
        }
    }

    fn read(path: &Path) -> Result<Option<ServerKey>, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let Some(text) = read_private(path, 256).map_err(io)? else {
            return Ok(None);
        };
        let bytes =
            rigfleet_proto::signing::decode_hex_array::<32>(text.trim()).ok_or_else(|| {
                KeyError::Corrupt {
                    path: path.to_path_buf(),
                }
            })?;
        Ok(Some(ServerKey {
            key: SigningKey::from_bytes(&bytes),
        }))
    }

    fn save(&self, path: &Path) -> Result<(), KeyError> {
        let hex = hex(self.key.as_bytes());
        write_atomic(path, format!("{hex}\n").as_bytes(), 0o600).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A fresh key from the operating system's random source (tests, rotation).
    pub fn generate() -> Result<ServerKey, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&secret);
        secret.fill(0);
        Ok(ServerKey { key })
    }

    /// The public key agents pin.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as hex.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// `sha256:<hex>` of the public key, as enrollment tokens carry it.
    pub fn fingerprint(&self) -> String {
        key_fingerprint(self.key.verifying_key().as_bytes())
    }

    /// The SHA-256 of the public key, raw (for tokens).
    pub fn fingerprint_bytes(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.key.verifying_key().as_bytes()).into()
    }

    /// Signs the server time sent in `welcome` (protocol 2), hex.
    pub fn sign_server_time(
        &self,
        agent_nonce: &[u8; 32],
        agent_id: &rigfleet_proto::AgentId,
        server_time_unix_ms: i64,
    ) -> String {
        let bytes = rigfleet_proto::signing::server_time_signing_bytes(
            agent_nonce,
            agent_id,
            server_time_unix_ms,
        );
        hex(&self.key.sign(&bytes).to_bytes())
    }

    /// Signs an order over the exact bytes of PROTOCOL.md.
    pub fn sign_order(
        &self,
        kind: OrderKind,
        rig_id: &RigId,
        counter: u64,
        expires_unix_ms: i64,
        payload: String,
    ) -> SignedOrder {
        let bytes = order_signing_bytes(kind, rig_id, counter, expires_unix_ms, payload.as_bytes());
        let sig = self.key.sign(&bytes).to_bytes();
        SignedOrder {
            rig_id: rig_id.clone(),
            counter,
            expires_unix_ms,
            payload,
            sig: hex(&sig),
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signature;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_made_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerKey::load_or_create(dir.path()).unwrap();
        let b = ServerKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key_hex(), b.public_key_hex());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(a.fingerprint().starts_with("sha256:"));
        assert_eq!(
            a.fingerprint(),
            format!("sha256:{}", hex(&a.fingerprint_bytes()))
        );
    }

    #[test]
    fn readable_or_corrupt_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        ServerKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ServerKey::load_or_create(dir.path()).is_err());
        write_atomic(&path, b"not hex", 0o600).unwrap();
        assert!(matches!(
            ServerKey::load_or_create(dir.path()),
            Err(KeyError::Corrupt { .. })
        ));
    }

    #[test]
    fn rotation_keeps_the_previous_key_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerKey::load_or_create(dir.path()).unwrap().fingerprint();
        assert!(ServerKey::load_previous(dir.path()).unwrap().is_none());
        let r = rotate(dir.path(), false).unwrap();
        assert_eq!(r.previous, first);
        assert_ne!(r.current, first);
        let now = ServerKey::load_or_create(dir.path()).unwrap();
        assert_eq!(now.fingerprint(), r.current);
        let prev = ServerKey::load_previous(dir.path()).unwrap().unwrap();
        assert_eq!(prev.fingerprint(), first);
        let mode = std::fs::metadata(dir.path().join(PREVIOUS_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second rotation would strand rigs that still pin the first key.
        assert!(matches!(
            rotate(dir.path(), false),
            Err(KeyError::PreviousKept(fp)) if fp == first
        ));
        assert_eq!(retire_previous(dir.path()).unwrap(), Some(first));
        assert!(ServerKey::load_previous(dir.path()).unwrap().is_none());
        assert_eq!(retire_previous(dir.path()).unwrap(), None);
        let again = rotate(dir.path(), false).unwrap();
        assert_eq!(again.previous, r.current);
        let forced = rotate(dir.path(), true).unwrap();
        assert_eq!(forced.previous, again.current);
    }

    #[test]
    fn a_previous_file_equal_to_the_current_key_means_no_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        // What a crash between the two writes of a rotation leaves.
        key.save(&dir.path().join(PREVIOUS_KEY_FILE)).unwrap();
        assert!(ServerKey::load_previous(dir.path()).unwrap().is_none());
        assert!(rotate(dir.path(), false).is_ok());
    }

    #[test]
    fn orders_verify_with_the_public_key() {
        let key = ServerKey::generate().unwrap();
        let order = key.sign_order(OrderKind::Command, &"rig-1".into(), 5, 99, "{}".into());
        let sig = Signature::from_bytes(&order.signature().unwrap());
        let pk = key.public_key();
        assert!(pk
            .verify_strict(&order.signing_bytes(OrderKind::Command), &sig)
            .is_ok());
        assert!(pk
            .verify_strict(&order.signing_bytes(OrderKind::SetConfig), &sig)
            .is_err());
    }
}
