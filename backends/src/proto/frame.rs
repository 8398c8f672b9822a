//! Length framing: a little-endian `u32` body length, then the body.
//!
//! [`FrameBuf`] is the receiving side's bounded buffer: it never holds more than one frame's
//! worth of bytes ([`FrameBuf::room`]), rejects a header that announces a body of 0 or more
//! than [`MAX_FRAME`] bytes before reading the body, and so allocates at most
//! `4 + MAX_FRAME` bytes per connection whatever the peer sends.

use serde::Serialize;

/// Largest frame body, in bytes. Control messages are small (the largest, a listing of
/// filters, is capped by the daemon); 64 KiB leaves room and bounds every buffer.
pub const MAX_FRAME: usize = 64 * 1024;

/// Bytes of the length header.
pub const HEADER: usize = 4;

/// What can be wrong with a frame, before its body is even looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces an empty body.
    #[error("empty frame (a frame's body is 1 to {MAX_FRAME} bytes)")]
    Empty,
    /// The header announces a body larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    Oversized(u64),
    /// More bytes were offered than the buffer has room for (a caller bug, never the peer's).
    #[error("{offered} bytes offered to a frame buffer with room for {room}")]
    Overflow {
        /// Bytes offered.
        offered: usize,
        /// Room there was.
        room: usize,
    },
    /// The message could not be encoded (only a bug can cause this).
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

/// Encodes `msg` as one frame (header and JSON body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER];
    serde_json::to_writer(&mut out, msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - HEADER;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized(len as u64));
    }
    out[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// A bounded receive buffer that yields whole frames.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// An empty buffer (allocates on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes the buffer accepts now: never more than completes the current
    /// frame (or its header), so one read can never grow it past `HEADER + MAX_FRAME`.
    pub fn room(&self) -> usize {
        if self.buf.len() < HEADER {
            return HEADER - self.buf.len();
        }
        let body = self.announced().unwrap_or(0);
        (HEADER + body).saturating_sub(self.buf.len())
    }

    /// True while part of a frame has arrived and the rest has not.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Appends bytes the peer sent; at most [`FrameBuf::room`] of them.
    pub fn extend(&mut self, data: &[u8]) -> Result<(), FrameError> {
        let room = self.room();
        if data.len() > room {
            return Err(FrameError::Overflow { offered: data.len(), room });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The body length the header announces, once the header is complete and valid.
    fn announced(&self) -> Option<usize> {
        let h: [u8; HEADER] = self.buf.get(..HEADER)?.try_into().ok()?;
        let n = u32::from_le_bytes(h) as usize;
        (1..=MAX_FRAME).contains(&n).then_some(n)
    }

    /// Checks the header as soon as it is complete: a bad length is reported before the
    /// body is read (the connection is then beyond repair: the stream has lost its framing).
    pub fn check_header(&self) -> Result<(), FrameError> {
        let Some(h) = self.buf.get(..HEADER) else { return Ok(()) };
        let mut a = [0u8; HEADER];
        a.copy_from_slice(h);
        match u32::from_le_bytes(a) as usize {
            0 => Err(FrameError::Empty),
            n if n > MAX_FRAME => Err(FrameError::Oversized(n as u64)),
            _ => Ok(()),
        }
    }

    /// Takes the next complete frame's body, if there is one.
    pub fn take(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.check_header()?;
        let Some(n) = self.announced() else { return Ok(None) };
        if self.buf.len() < HEADER + n {
            return Ok(None);
        }
        let body = self.buf[HEADER..HEADER + n].to_vec();
        self.buf.clear();
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let f = encode(&"hello").unwrap();
        let mut b = FrameBuf::new();
        for &byte in &f[..f.len() - 1] {
            b.extend(&[byte]).unwrap();
            assert_eq!(b.take().unwrap(), None);
            assert!(b.is_partial());
        }
        b.extend(&f[f.len() - 1..]).unwrap();
        assert_eq!(b.take().unwrap().unwrap(), b"\"hello\"");
        assert!(!b.is_partial());
    }

    #[test]
    fn bad_lengths_are_refused_before_the_body() {
        let mut b = FrameBuf::new();
        b.extend(&0u32.to_le_bytes()).unwrap();
        assert_eq!(b.take(), Err(FrameError::Empty));
        let mut b = FrameBuf::new();
        b.extend(&u32::MAX.to_le_bytes()).unwrap();
        assert_eq!(b.take(), Err(FrameError::Oversized(u32::MAX as u64)));
        assert_eq!(b.room(), 0);
    }

    #[test]
    fn the_buffer_never_takes_more_than_one_frame() {
        let mut b = FrameBuf::new();
        assert_eq!(b.room(), HEADER);
        b.extend(&10u32.to_le_bytes()).unwrap();
        assert_eq!(b.room(), 10);
        assert!(b.extend(&[0; 11]).is_err());
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let big = "x".repeat(MAX_FRAME);
        assert!(matches!(encode(&big), Err(FrameError::Oversized(_))));
    }
}
