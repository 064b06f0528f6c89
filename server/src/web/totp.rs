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
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(given) = code.parse::<u32>() else {
        return false;
    };
    let Some(key) = base32_decode(secret_b32) else {
        return false;
    };
    let step = (unix_secs / STEP_SECS) as i64;
    (-SKEW_STEPS..=SKEW_STEPS).any(|d| {
        u64::try_from(step + d)
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

/// `n` recovery codes (10 hex digits each) and their hashes for storage.
pub fn recovery_codes(n: usize) -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..n).map(|_| crate::hub::random_hex(5)).collect();
    let hashes = codes
        .iter()
        .map(|c| super::session::sha256_hex(c))
        .collect();
    (codes, hashes)
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
    fn qr_is_svg() {
        let uri = otpauth_uri("rigfleet", "admin", "GEZDGNBV");
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(!svg.contains("admin"));
        assert!(!svg.contains("style"));
    }
}
