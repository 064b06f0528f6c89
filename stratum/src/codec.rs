//! Newline-delimited JSON framing with a bound on line length.
//!
//! A line is read up to [`MAX_LINE_BYTES`]; a longer one is an error that the caller treats as a
//! broken connection, because what follows it cannot be trusted to start a new message. Reading
//! is cancel-safe with respect to `tokio::select!` only between lines, so sessions read in one
//! dedicated task.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::error::MessageError;

/// Longest accepted line, newline included: real jobs are a few KiB (a coinbase and a merkle
/// branch of at most a dozen hashes), so 64 KiB leaves ample room and bounds memory per session.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Errors of reading a line: I/O, or a violation of the framing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The peer broke the framing.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// Reads one line (without its `\n` or `\r\n`) into `buf`; `Ok(false)` at end of stream. Empty
/// lines are skipped.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut String,
) -> Result<bool, ReadError> {
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        loop {
            let available = reader.fill_buf().await?;
            if available.is_empty() {
                if bytes.is_empty() {
                    return Ok(false);
                }
                // A last line without newline still counts.
                break;
            }
            let (take, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if bytes.len() + take > MAX_LINE_BYTES {
                return Err(MessageError::LineTooLong {
                    limit: MAX_LINE_BYTES,
                }
                .into());
            }
            bytes.extend_from_slice(&available[..take]);
            reader.consume(take);
            if done {
                break;
            }
        }
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        buf.clear();
        let text = std::str::from_utf8(&bytes).map_err(|e| MessageError::NotJson(e.to_string()))?;
        buf.push_str(text);
        return Ok(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn reads_lines_and_skips_blank_ones() {
        let data: &[u8] = b"{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}";
        let mut r = BufReader::with_capacity(4, data);
        let mut line = String::new();
        let mut seen = Vec::new();
        while read_line(&mut r, &mut line).await.unwrap() {
            seen.push(line.clone());
        }
        assert_eq!(seen, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }

    #[tokio::test]
    async fn refuses_a_line_over_the_limit() {
        let mut data = vec![b'x'; MAX_LINE_BYTES + 10];
        data.push(b'\n');
        let mut r = BufReader::new(&data[..]);
        let mut line = String::new();
        let err = read_line(&mut r, &mut line).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Message(MessageError::LineTooLong { .. })
        ));
    }

    #[tokio::test]
    async fn line_exactly_at_the_limit_is_accepted() {
        let mut data = vec![b'x'; MAX_LINE_BYTES - 1];
        data.push(b'\n');
        let mut r = BufReader::new(&data[..]);
        let mut line = String::new();
        assert!(read_line(&mut r, &mut line).await.unwrap());
        assert_eq!(line.len(), MAX_LINE_BYTES - 1);
    }

    #[tokio::test]
    async fn invalid_utf8_is_a_message_error() {
        let data: &[u8] = b"\xff\xfe\n";
        let mut r = BufReader::new(data);
        let mut line = String::new();
        assert!(matches!(
            read_line(&mut r, &mut line).await,
            Err(ReadError::Message(MessageError::NotJson(_)))
        ));
    }
}
