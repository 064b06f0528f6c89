//! Minimal hex encoding for test vectors, logs and headers; the engine has no other dependency
//! that would provide it.

/// A hex string that could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexError;

impl std::fmt::Display for HexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid hex string")
    }
}

impl std::error::Error for HexError {}

/// Decodes a hex string of any even length.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(HexError);
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// Decodes a hex string of exactly `N` bytes.
pub fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let v = decode(s)?;
    v.try_into().map_err(|_| HexError)
}

/// Lower-case hex of the bytes in order.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Hex of the bytes reversed: how block explorers print hashes.
pub fn encode_reversed(bytes: &[u8]) -> String {
    let mut v = bytes.to_vec();
    v.reverse();
    encode(&v)
}

fn nibble(c: u8) -> Result<u8, HexError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(HexError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        assert_eq!(decode("00ff10Ab").unwrap(), vec![0, 255, 16, 171]);
        assert_eq!(encode(&[0, 255, 16, 171]), "00ff10ab");
        assert_eq!(encode_reversed(&[1, 2]), "0201");
        assert_eq!(decode("abc"), Err(HexError));
        assert_eq!(decode("zz"), Err(HexError));
        assert_eq!(decode_array::<2>("0102"), Ok([1, 2]));
        assert_eq!(decode_array::<2>("010203"), Err(HexError));
    }
}
