//! Stream framing (RFC 3261 §18.3): where one message ends in a TCP/TLS byte stream.

use super::find;

/// Why a TCP/TLS byte stream cannot be cut into SIP messages (the connection is dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No blank line within the first 64 KiB.
    #[error("header block too long")]
    HeadTooLong,
    /// The header block is not UTF-8.
    #[error("header block is not UTF-8")]
    NotUtf8,
    /// A Content-Length that is not a number (the value as sent).
    #[error("bad Content-Length {0:?}")]
    BadContentLength(String),
    /// Two Content-Length headers that disagree.
    #[error("conflicting Content-Length")]
    ConflictingContentLength,
    /// No Content-Length, which streams require.
    #[error("no Content-Length on a stream transport")]
    NoContentLength,
    /// A body above 1 MiB.
    #[error("Content-Length too large")]
    ContentLengthTooLarge,
}

/// Stream framing: is a complete message in `buf`? Checked before parsing, as a TCP read
/// may hold half a message or several (see [`crate::sip::frame_stream`]).
pub(crate) fn frame(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    /// A header block longer than this is an attack or garbage, not SIP.
    const MAX_HEAD: usize = 64 * 1024;
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let rest = &buf[skip..];
    let Some(end) = find(rest, b"\r\n\r\n") else {
        if rest.len() > MAX_HEAD {
            return Err(FrameError::HeadTooLong);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&rest[..end]).map_err(|_| FrameError::NotUtf8)?;
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| FrameError::BadContentLength(value.trim().to_owned()))?;
            if length.is_some_and(|l| l != n) {
                return Err(FrameError::ConflictingContentLength);
            }
            length = Some(n);
        }
    }
    // Mandatory on streams: without it the message boundary is unknown.
    let length = length.ok_or(FrameError::NoContentLength)?;
    if length > 1024 * 1024 {
        return Err(FrameError::ContentLengthTooLarge);
    }
    let total = end + 4 + length;
    Ok((rest.len() >= total).then_some((skip, total)))
}
