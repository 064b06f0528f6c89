//! TOTP second factor (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits), base32 secrets as
//! authenticator apps expect them, the QR code of the `otpauth://` URI drawn as SVG, and
//! recovery codes.

use hmac::{Hmac, Mac};

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Steps accepted either side of now (clock drift of phones).
pub const SKEW_STEPS: i64 = 1;

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Base32 (RFC 4648, no padding).
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::new();
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(B32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Base32 decode (case-insensitive, spaces and padding ignored); `None` on a bad character.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf: u32 = 0;
    let mut bits = 0;
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = B32
            .iter()
            .position(|&x| x as char == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push(((buf >> (bits - 8)) & 0xff) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// The HOTP value (RFC 4226) of `counter`, `digits` long.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> Option<u32> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).ok()?;
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[offset] & 0x7f) << 24)
        | (u32::from(h[offset + 1]) << 16)
        | (u32::from(h[offset + 2]) << 8)
        | u32::from(h[offset + 3]);
    Some(bin % 10u32.pow(digits))
}

/// Whether `code` is the 6-digit TOTP of `secret_b32` at `unix_secs` (± [`SKEW_STEPS`]).
pub fn verify(secret_b32: &str, code: &str, unix_secs: u64) -> bool {
    verify_step(secret_b32, code, unix_secs).is_some()
}

/// The 30-second step whose TOTP `code` is (within ± [`SKEW_STEPS`] of `unix_secs`), if any:
/// the caller accepts each step once ([`crate::db::Store::totp_use_step`]).
pub fn verify_step(secret_b32: &str, code: &str, unix_secs: u64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let given = code.parse::<u32>().ok()?;
    let key = base32_decode(secret_b32)?;
    let step = i64::try_from(unix_secs / STEP_SECS).ok()?;
    (-SKEW_STEPS..=SKEW_STEPS).map(|d| step + d).find(|s| {
        u64::try_from(*s)
            .ok()
            .and_then(|c| hotp(&key, c, 6))
            .is_some_and(|v| v == given)
    })
}

/// A fresh 160-bit secret, base32.
pub fn new_secret() -> Option<String> {
    let mut key = [0u8; 20];
    getrandom::getrandom(&mut key).ok()?;
    Some(base32_encode(&key))
}

/// The URI authenticator apps read from the QR code.
pub fn otpauth_uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// The QR code of `data` as an SVG element (modules only: no text of `data` appears in it).
pub fn qr_svg(data: &str) -> Option<String> {
    let code = qrcode::QrCode::new(data.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build();
    let start = svg.find("<svg")?;
    Some(svg[start..].to_string())
}

/// Characters of a recovery code (base32: 80 random bits), shown in groups of four.
pub const RECOVERY_CHARS: usize = 16;
/// Characters of the recovery codes made before (10 hex digits, 40 bits), still accepted.
const LEGACY_RECOVERY_CHARS: usize = 10;
const RECOVERY_HASH_TAG: &str = "s1$";

/// A recovery code as typed, made comparable: lower case, no dashes or spaces.
pub fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether a typed code has the shape of a recovery code (a new or an older one).
pub fn looks_like_recovery(code: &str) -> bool {
    let c = normalize_recovery(code);
    (c.len() == RECOVERY_CHARS && base32_decode(&c).is_some())
        || (c.len() == LEGACY_RECOVERY_CHARS && c.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn salted_hash(salt: &[u8], normalized: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"rigfleet recovery code v1\0");
    h.update(salt);
    h.update(normalized.as_bytes());
    crate::keys::hex(&h.finalize())
}

/// The stored form of a recovery code: `s1$<salt>$<SHA-256 of tag, salt and code>`, a fresh
/// 128-bit salt per code.
pub fn hash_recovery(code: &str) -> Option<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).ok()?;
    let hash = salted_hash(&salt, &normalize_recovery(code));
    Some(format!(
        "{RECOVERY_HASH_TAG}{}${hash}",
        crate::keys::hex(&salt)
    ))
}

/// Whether `code` is the one stored as `stored` (a salted hash, or the unsalted SHA-256 hex
/// that older versions stored).
pub fn recovery_matches(stored: &str, code: &str) -> bool {
    let normalized = normalize_recovery(code);
    let computed = match stored.strip_prefix(RECOVERY_HASH_TAG) {
        Some(rest) => {
            let Some((salt_hex, _)) = rest.split_once('$') else {
                return false;
            };
            let Some(salt) = base16(salt_hex) else {
                return false;
            };
            format!(
                "{RECOVERY_HASH_TAG}{salt_hex}${}",
                salted_hash(&salt, &normalized)
            )
        }
        None => super::sha256_hex(&normalized),
    };
    super::constant_time_eq(computed.as_bytes(), stored.as_bytes())
}

fn base16(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `n` recovery codes (16 base32 characters, 80 random bits, as `xxxx-xxxx-xxxx-xxxx`) and
/// their salted hashes for storage; `None` when the system gives no randomness.
pub fn recovery_codes(n: usize) -> Option<(Vec<String>, Vec<String>)> {
    let mut codes = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for _ in 0..n {
        let mut raw = [0u8; RECOVERY_CHARS * 5 / 8];
        getrandom::getrandom(&mut raw).ok()?;
        let b32 = base32_encode(&raw).to_ascii_lowercase();
        let shown = b32
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-");
        hashes.push(hash_recovery(&b32)?);
        codes.push(shown);
    }
    Some((codes, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1 seed, 8 digits.
        let key = b"12345678901234567890";
        for (t, want) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(hotp(key, t / 30, 8), Some(want));
        }
        let b32 = base32_encode(key);
        assert_eq!(b32, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(base32_decode(&b32).as_deref(), Some(&key[..]));
        assert!(verify(&b32, "287082", 59));
        assert!(verify(&b32, "287082", 59 + 30));
        assert!(!verify(&b32, "287082", 59 + 90));
        assert!(!verify(&b32, "28708", 59));
        assert!(!verify(&b32, "abcdef", 59));
    }

    #[test]
    fn a_code_names_its_step() {
        let b32 = base32_encode(b"12345678901234567890");
        // 287082 is the code of step 1 (t = 30..59).
        assert_eq!(verify_step(&b32, "287082", 59), Some(1));
        assert_eq!(verify_step(&b32, "287082", 89), Some(1));
        assert_eq!(verify_step(&b32, "287082", 149), None);
        assert_eq!(verify_step(&b32, "28708x", 59), None);
    }

    #[test]
    fn recovery_codes_are_long_and_stored_salted() {
        let (codes, hashes) = recovery_codes(8).unwrap();
        assert_eq!((codes.len(), hashes.len()), (8, 8));
        for (c, h) in codes.iter().zip(&hashes) {
            // 80 bits: 16 base32 characters in four groups.
            assert_eq!(c.len(), 19, "{c}");
            assert_eq!(normalize_recovery(c).len(), RECOVERY_CHARS);
            assert!(looks_like_recovery(c));
            assert!(h.starts_with("s1$"), "{h}");
            assert!(!h.contains(&normalize_recovery(c)));
            // The unsalted SHA-256 of the code is not what is stored.
            assert!(!h.contains(&super::super::sha256_hex(&normalize_recovery(c))));
            assert!(recovery_matches(h, c));
            assert!(recovery_matches(
                h,
                &c.to_ascii_uppercase().replace('-', " ")
            ));
        }
        assert!(!recovery_matches(&hashes[0], &codes[1]));
        // The same code hashed twice differs (salt).
        assert_ne!(hash_recovery(&codes[0]), hash_recovery(&codes[0]));
        // Codes from before (10 hex digits, unsalted SHA-256) still work.
        let legacy = super::super::sha256_hex("0a1b2c3d4e");
        assert!(looks_like_recovery("0A1B2C3D4E"));
        assert!(recovery_matches(&legacy, "0A1B2C3D4E"));
        assert!(!recovery_matches(&legacy, "0a1b2c3d4f"));
        assert!(!recovery_matches("s1$zz$00", "0a1b2c3d4e"));
        assert!(!looks_like_recovery("123456"));
    }

    #[test]
    fn qr_is_svg() {
        let uri = otpauth_uri("rigfleet", "admin", "GEZDGNBV");
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(!svg.contains("admin"));
        assert!(!svg.contains("style"));
    }
}
