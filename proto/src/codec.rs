//! The frame codec: a varint length prefix, then one protobuf message.
//!
//! The length is checked against the maximum frame size before any buffer is
//! reserved for the body, so a peer cannot make us allocate by lying about a
//! length. A partial frame is not an error: [`FrameDecoder::next_frame`] returns
//! `Ok(None)` and the caller reads more bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::limits::MAX_VARINT_BYTES;

/// What can go wrong with a frame. Incomplete input is not here on purpose.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the maximum frame size. The stream
    /// cannot be resynchronised after this; close it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The length prefix is not a valid varint (more than 10 bytes or overflow).
    #[error("invalid frame length prefix")]
    BadLength,
    /// The body is not a valid protobuf message of the expected type. Framing is
    /// intact, so the stream can go on with the next frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Splits a byte stream into frames. Feed it with [`FrameDecoder::buffer_mut`].
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { buf: BytesMut::new(), max_frame_bytes }
    }

    /// The buffer to append received bytes to.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Changes the limit, e.g. once the peer announced its own.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Bytes received but not yet consumed as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Splits off the next complete frame body, if one is buffered.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] or [`FrameError::BadLength`] when the length
    /// prefix is unacceptable; the stream is then unusable.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((len, prefix)) = peek_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > self.max_frame_bytes as u64 {
            return Err(FrameError::TooLarge { len, max: self.max_frame_bytes });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            // Safe to reserve now: len is bounded by the maximum frame size.
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Splits off and decodes the next complete frame as `M`.
    ///
    /// # Errors
    /// As [`FrameDecoder::next_frame`], plus [`FrameError::Malformed`] when the
    /// body does not decode; the frame is consumed in that case.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(body) => decode_body(&body).map(Some),
        }
    }
}

/// Decodes one frame body (without its length prefix).
///
/// # Errors
/// [`FrameError::Malformed`] when the bytes are not a valid `M`.
pub fn decode_body<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Encodes `msg` as one frame (length prefix + body).
///
/// # Errors
/// [`FrameError::TooLarge`] when the encoded message exceeds `max_frame_bytes`.
pub fn encode_frame<M: Message>(msg: &M, max_frame_bytes: usize) -> Result<Bytes, FrameError> {
    let len = msg.encoded_len();
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge { len: len as u64, max: max_frame_bytes });
    }
    let mut out = BytesMut::with_capacity(len + MAX_VARINT_BYTES);
    prost::encoding::encode_varint(len as u64, &mut out);
    msg.encode(&mut out).expect("buffer has the capacity encoded_len asked for");
    Ok(out.freeze())
}

/// Appends `msg` as one frame to `out` without a size check; for callers that
/// batch many small frames they produced themselves.
pub fn encode_frame_into<M: Message>(msg: &M, out: &mut impl BufMut) {
    prost::encoding::encode_varint(msg.encoded_len() as u64, out);
    msg.encode(out).expect("BufMut grows as needed");
}

/// Reads a varint at the front of `buf` without consuming it: `(value, bytes)`.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(MAX_VARINT_BYTES) {
        let part = u64::from(b & 0x7f);
        if i == MAX_VARINT_BYTES - 1 && b > 0x01 {
            return Err(FrameError::BadLength);
        }
        value |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_BYTES {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{client_frame, ClientFrame, Hello};

    fn hello() -> ClientFrame {
        ClientFrame {
            kind: Some(client_frame::Kind::Hello(Hello {
                min_version: 1,
                max_version: 1,
                client_name: "test".into(),
                session_token: String::new(),
            })),
        }
    }

    #[test]
    fn round_trip_one_frame() {
        let frame = encode_frame(&hello(), 1024).unwrap();
        let mut d = FrameDecoder::new(1024);
        d.extend(&frame);
        assert_eq!(d.next_message::<ClientFrame>().unwrap(), Some(hello()));
        assert_eq!(d.next_message::<ClientFrame>().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn partial_frames_byte_by_byte_are_not_errors() {
        let mut bytes = encode_frame(&hello(), 1024).unwrap().to_vec();
        bytes.extend_from_slice(&encode_frame(&hello(), 1024).unwrap());
        let mut d = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for b in bytes {
            d.extend(&[b]);
            while let Some(m) = d.next_message::<ClientFrame>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![hello(), hello()]);
    }

    #[test]
    fn too_large_is_detected_from_the_prefix_alone() {
        let mut d = FrameDecoder::new(100);
        // Prefix announcing 1 GiB, and no body at all.
        let mut prefix = BytesMut::new();
        prost::encoding::encode_varint(1 << 30, &mut prefix);
        d.extend(&prefix);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: 1 << 30, max: 100 }));
        // Nothing was reserved for the announced body.
        assert!(d.buf.capacity() < 1 << 20);
    }

    #[test]
    fn frame_exactly_at_the_limit_is_accepted() {
        let mut d = FrameDecoder::new(3);
        d.extend(&[3, 1, 2, 3]);
        assert_eq!(d.next_frame().unwrap().unwrap().as_ref(), &[1, 2, 3]);
        d.extend(&[4, 1, 2, 3, 4]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { len: 4, .. })));
    }

    #[test]
    fn overlong_varint_is_bad_length() {
        let mut d = FrameDecoder::new(100);
        d.extend(&[0xff; 11]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength));
        let mut d = FrameDecoder::new(100);
        d.extend(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength));
    }

    #[test]
    fn incomplete_varint_waits() {
        let mut d = FrameDecoder::new(1 << 20);
        d.extend(&[0x80]);
        assert_eq!(d.next_frame(), Ok(None));
        d.extend(&[0x01]);
        assert_eq!(d.next_frame(), Ok(None)); // 128-byte body announced, none present
    }

    #[test]
    fn malformed_body_is_typed_and_consumed() {
        let mut d = FrameDecoder::new(100);
        // Field 1, wire type 2 (length-delimited) with a length running past the end.
        d.extend(&[2, 0x0a, 0x05]);
        d.extend(&encode_frame(&hello(), 100).unwrap());
        assert!(matches!(d.next_message::<ClientFrame>(), Err(FrameError::Malformed(_))));
        assert_eq!(d.next_message::<ClientFrame>().unwrap(), Some(hello()));
    }

    #[test]
    fn encoding_refuses_oversized_messages() {
        assert!(matches!(encode_frame(&hello(), 3), Err(FrameError::TooLarge { .. })));
    }
}
