//! A video's or audio's length from its ISO base media container (MP4, MOV,
//! M4A): the movie header (`moov` → `mvhd`) holds a timescale and a
//! duration in its units. The `moov` box may come before the media data
//! (a "fast start" file) or after it, so natterd walks the top-level boxes
//! by their headers, reading a few bytes at each, never the data between.

/// Top-level boxes looked at before giving up.
pub const MAX_BOXES: usize = 64;
/// Bytes of a box header read at each step (a 64-bit size included).
pub const HEADER_BYTES: u64 = 16;
/// Bytes read from the start of `moov`'s contents to find `mvhd` in
/// (it comes first in practice).
pub const MOOV_PREFIX: u64 = 4096;

/// A box header at some offset of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxHeader {
    pub kind: [u8; 4],
    /// The header's own length (8, or 16 with a 64-bit size).
    pub header_len: u64,
    /// The whole box's length; `None`: it runs to the end of the file.
    pub size: Option<u64>,
}

/// Reads the box header at the start of `bytes`; `None` when there is none
/// (too short, or a size smaller than its header).
pub fn box_header(bytes: &[u8]) -> Option<BoxHeader> {
    let size32 = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
    let (header_len, size) = match size32 {
        0 => (8, None),
        1 => (16, Some(u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?))),
        n => (8, Some(u64::from(n))),
    };
    if size.is_some_and(|s| s < header_len) {
        return None;
    }
    Some(BoxHeader { kind, header_len, size })
}

/// The duration in milliseconds from the start of a `moov` box's contents:
/// its `mvhd` child (version 0 or 1). `None` when there is no readable
/// `mvhd`, its timescale is 0 or its duration is "unknown" (all ones).
pub fn mvhd_duration_ms(moov_contents: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    while at < moov_contents.len() {
        let header = box_header(&moov_contents[at..])?;
        let body = &moov_contents[at + header.header_len as usize..];
        if &header.kind == b"mvhd" {
            let be32 = |i: usize| body.get(i..i + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
            let (timescale, duration) = match body.first()? {
                0 => (be32(12)?, Some(be32(16)?).filter(|&d| d != u32::MAX).map(u64::from)?),
                1 => {
                    let d = u64::from_be_bytes(body.get(24..32)?.try_into().ok()?);
                    (be32(20)?, Some(d).filter(|&d| d != u64::MAX)?)
                }
                _ => return None,
            };
            if timescale == 0 {
                return None;
            }
            return u64::try_from(u128::from(duration) * 1000 / u128::from(timescale)).ok();
        }
        at = at.checked_add(usize::try_from(header.size?).ok()?)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], contents: &[u8]) -> Vec<u8> {
        let mut b = ((contents.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(contents);
        b
    }

    #[test]
    fn headers_of_every_size_form() {
        assert_eq!(
            box_header(b"\0\0\0\x18ftypisom"),
            Some(BoxHeader { kind: *b"ftyp", header_len: 8, size: Some(24) })
        );
        let mut large = b"\0\0\0\x01mdat".to_vec();
        large.extend_from_slice(&(5u64 << 32).to_be_bytes());
        assert_eq!(box_header(&large), Some(BoxHeader { kind: *b"mdat", header_len: 16, size: Some(5 << 32) }));
        assert_eq!(box_header(b"\0\0\0\0mdat"), Some(BoxHeader { kind: *b"mdat", header_len: 8, size: None }));
        assert_eq!(box_header(b"\0\0\0\x04moov"), None, "smaller than its header");
        assert_eq!(box_header(b"\0\0\0\x01mdat\0\0"), None, "a 64-bit size cut short");
        assert_eq!(box_header(b"\0\0"), None);
    }

    #[test]
    fn both_mvhd_versions_give_milliseconds() {
        // Version 0: timescale 600, 56,100 units = 93.5 s; after another child.
        let mut v0 = vec![0u8; 4 + 4 + 4];
        v0.extend_from_slice(&600u32.to_be_bytes());
        v0.extend_from_slice(&56_100u32.to_be_bytes());
        let mut moov = boxed(b"udta", b"x");
        moov.extend(boxed(b"mvhd", &v0));
        assert_eq!(mvhd_duration_ms(&moov), Some(93_500));
        // Version 1: 64-bit times, timescale 90,000, 12 s.
        let mut v1 = vec![1u8, 0, 0, 0];
        v1.extend_from_slice(&[0; 16]);
        v1.extend_from_slice(&90_000u32.to_be_bytes());
        v1.extend_from_slice(&1_080_000u64.to_be_bytes());
        assert_eq!(mvhd_duration_ms(&boxed(b"mvhd", &v1)), Some(12_000));
    }

    #[test]
    fn unknown_or_broken_durations_are_none() {
        let v0 = |timescale: u32, duration: u32| {
            let mut b = vec![0u8; 12];
            b.extend_from_slice(&timescale.to_be_bytes());
            b.extend_from_slice(&duration.to_be_bytes());
            boxed(b"mvhd", &b)
        };
        assert_eq!(mvhd_duration_ms(&v0(0, 100)), None, "no timescale");
        assert_eq!(mvhd_duration_ms(&v0(600, u32::MAX)), None, "unknown");
        assert_eq!(mvhd_duration_ms(&v0(600, 100)[..20]), None, "cut short");
        assert_eq!(mvhd_duration_ms(&boxed(b"trak", b"abc")), None, "no mvhd");
        let mut v9 = v0(600, 100);
        v9[8] = 9;
        assert_eq!(mvhd_duration_ms(&v9), None, "a version this does not know");
        assert_eq!(mvhd_duration_ms(b"\0\0\0\0mvhd"), None, "a child without a size");
    }
}
