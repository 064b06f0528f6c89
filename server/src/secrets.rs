//! Secrets at rest: TOTP secrets and pool passwords are sealed (XChaCha20-Poly1305, a random
//! 192-bit nonce per value) with a 256-bit key kept in the data folder (`secrets.key`, mode
//! 0600), so a copied database file or backup alone does not give them away. Each value is
//! bound to its purpose (associated data), so a sealed value moved to another column or user
//! does not open. Values written before sealing existed (plain text) are still read as they are.
//!
//! Replicas sharing one PostgreSQL need the same `secrets.key`: copy it with the database.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// The key's file in the data folder.
pub const KEY_FILE: &str = "secrets.key";
/// What a sealed value starts with (version 1); anything else is read as plain text.
pub const PREFIX: &str = "rfsec1:";
const NONCE_BYTES: usize = 24;

/// Why a secret could not be sealed or opened, or the key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or writing the key file.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex digits.
    #[error("{0} is not a secrets key (64 hex digits)")]
    BadKey(std::path::PathBuf),
    /// The operating system gave no randomness.
    #[error("no randomness: {0}")]
    Random(String),
    /// A sealed value was damaged, sealed with another key or for another purpose.
    #[error("a sealed secret does not open with this server's secrets key")]
    Open,
}

/// The sealing key.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox").finish_non_exhaustive()
    }
}

/// Whether `stored` is a sealed value (rather than plain text from before sealing).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

fn random<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(b)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SecretBox {
    /// A box over `key`.
    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// A box with a fresh random key (tests).
    pub fn generate() -> Result<SecretBox, SecretError> {
        let mut key = random::<32>()?;
        let b = SecretBox::from_key(&key);
        key.fill(0);
        Ok(b)
    }

    /// Loads `secrets.key` from `data_dir`, or makes one (mode 0600) when there is none. A key
    /// file that group or others can read is refused, as the server key is.
    pub fn load_or_create(data_dir: &Path) -> Result<SecretBox, SecretError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        if let Some(text) = crate::files::read_private(&path, 256).map_err(io)? {
            let mut key = rigfleet_proto::signing::decode_hex_array::<32>(text.trim())
                .ok_or_else(|| SecretError::BadKey(path.clone()))?;
            let b = SecretBox::from_key(&key);
            key.fill(0);
            return Ok(b);
        }
        crate::files::create_private_dir(data_dir).map_err(io)?;
        let mut key = random::<32>()?;
        let mut text = crate::keys::hex(&key);
        text.push('\n');
        let written = crate::files::write_atomic(&path, text.as_bytes(), 0o600);
        let b = SecretBox::from_key(&key);
        key.fill(0);
        // Overwrite the hex copy too (best effort: the allocator may have copied it).
        text.clear();
        written.map_err(io)?;
        Ok(b)
    }

    /// Seals `plain` for `purpose` (e.g. `totp:7`, `pool-password`).
    pub fn seal(&self, purpose: &str, plain: &str) -> Result<String, SecretError> {
        let nonce = random::<NONCE_BYTES>()?;
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Open)?;
        let mut out = String::with_capacity(PREFIX.len() + 2 * (NONCE_BYTES + ct.len()));
        out.push_str(PREFIX);
        out.push_str(&crate::keys::hex(&nonce));
        out.push_str(&crate::keys::hex(&ct));
        Ok(out)
    }

    /// Opens a value stored for `purpose`: a sealed one is decrypted and checked, a plain one
    /// (stored before sealing) is returned as it is.
    pub fn open(&self, purpose: &str, stored: &str) -> Result<String, SecretError> {
        let Some(hex) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let bytes = unhex(hex).ok_or(SecretError::Open)?;
        if bytes.len() < NONCE_BYTES + 16 {
            return Err(SecretError::Open);
        }
        let (nonce, ct) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seal_open_and_plain_text_from_before() {
        let b = SecretBox::generate().unwrap();
        let sealed = b.seal("totp:1", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(b.open("totp:1", &sealed).unwrap(), "JBSWY3DPEHPK3PXP");
        // Two seals of one value differ (random nonce).
        assert_ne!(b.seal("totp:1", "JBSWY3DPEHPK3PXP").unwrap(), sealed);
        // Bound to its purpose, its key, and every byte.
        assert!(b.open("totp:2", &sealed).is_err());
        assert!(SecretBox::generate()
            .unwrap()
            .open("totp:1", &sealed)
            .is_err());
        let mut bad = sealed.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        assert!(b.open("totp:1", &bad).is_err());
        assert!(b.open("totp:1", "rfsec1:zz").is_err());
        assert!(b.open("totp:1", "rfsec1:00").is_err());
        // Plain text written before sealing reads as it is.
        assert_eq!(b.open("totp:1", "JBSWY3DP").unwrap(), "JBSWY3DP");
    }

    #[test]
    fn key_file_is_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = SecretBox::load_or_create(&data).unwrap();
        let sealed = a.seal("p", "x").unwrap();
        let mode = std::fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SecretBox::load_or_create(&data).unwrap();
        assert_eq!(b.open("p", &sealed).unwrap(), "x");
        std::fs::set_permissions(data.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(SecretBox::load_or_create(&data).is_err());
        std::fs::set_permissions(data.join(KEY_FILE), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(data.join(KEY_FILE), "nothex").unwrap();
        assert!(matches!(
            SecretBox::load_or_create(&data),
            Err(SecretError::BadKey(_))
        ));
    }
}
