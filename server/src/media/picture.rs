//! Stored images: their location and camera metadata removed (EXIF, XMP,
//! IPTC, comments; a JPEG keeps only its orientation), and a small preview
//! for the message list. Both work on whole images in memory and are CPU
//! work: callers run them off the async workers, a few at a time.
//!
//! Stripping rewrites the container only (JPEG segments, PNG chunks, WebP
//! chunks); the compressed pixels are copied untouched, so nothing is
//! re-encoded and the result is the same for the same input. Other image
//! types (HEIC, AVIF, TIFF) are kept as they are.

use std::io::Cursor;

use image::{ImageDecoder, ImageReader};

/// The long side of a preview, in pixels.
pub const PREVIEW_MAX_SIDE: u32 = 320;
/// JPEG quality of previews.
const PREVIEW_QUALITY: u8 = 80;

/// The image without its metadata, or `None` when there was none to remove
/// (or the type is not one stripped here, or the file is not a well-formed
/// container of its type).
pub fn strip_metadata(mime: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let stripped = match mime {
        "image/jpeg" => strip_jpeg(bytes)?,
        "image/png" => strip_png(bytes)?,
        "image/webp" => strip_webp(bytes)?,
        _ => return None,
    };
    (stripped != bytes).then_some(stripped)
}

/// A preview natterd made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Why an image has no preview.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoPreview {
    /// Already no larger than a preview: it is its own.
    #[error("small enough to be its own preview")]
    Small,
    /// More pixels than `media.max_image_pixels` (a decompression bomb, or
    /// just huge): not decoded.
    #[error("{width}x{height} pixels is over the limit of {limit}")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("cannot decode the image: {0}")]
    Undecodable(String),
}

/// A JPEG of at most [`PREVIEW_MAX_SIDE`] pixels on the long side, turned
/// upright by the image's orientation. The header's dimensions are checked
/// against `max_pixels` before anything is decoded, and the decoder may not
/// allocate more than that many RGBA pixels.
///
/// # Errors
/// [`NoPreview`].
pub fn preview(bytes: &[u8], max_pixels: u64) -> Result<Preview, NoPreview> {
    let undecodable = |e: image::ImageError| NoPreview::Undecodable(e.to_string());
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| NoPreview::Undecodable(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(4));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(NoPreview::TooManyPixels { width, height, limit: max_pixels });
    }
    if width.max(height) <= PREVIEW_MAX_SIDE {
        return Err(NoPreview::Small);
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut picture = image::DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    picture.apply_orientation(orientation);
    let small = picture.thumbnail(PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE).into_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, PREVIEW_QUALITY)
        .encode_image(&small)
        .map_err(undecodable)?;
    Ok(Preview { width: small.width(), height: small.height(), jpeg })
}

/// JPEG: SOI, segments up to the first scan, entropy-coded data (with more
/// segments between scans of a progressive JPEG), EOI. Kept: JFIF (APP0),
/// ICC profiles (APP2), Adobe (APP14) and every non-APP segment; dropped:
/// EXIF (replaced by one holding only the orientation, when that is not
/// "upright"), XMP, MPF and the other APPn, comments, and anything after EOI
/// (a multi-picture file's further images, with their own EXIF).
fn strip_jpeg(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 4 || b[0..2] != [0xFF, 0xD8] {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[0..2]);
    let mut orientation_kept = false;
    let mut i = 2;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if *b.get(i)? != 0xFF {
            return None;
        }
        let marker = *b.get(i + 1)?;
        match marker {
            0xD9 => {
                out.extend_from_slice(&[0xFF, 0xD9]);
                return Some(out);
            }
            0x01 | 0xD0..=0xD7 => {
                out.extend_from_slice(&b[i..i + 2]);
                i += 2;
                continue;
            }
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]));
        if len < 2 {
            return None;
        }
        let end = i.checked_add(2 + len)?;
        let segment = b.get(i..end)?;
        let body = &segment[4..];
        match marker {
            0xE1 if body.starts_with(b"Exif\0\0") => {
                let orientation = exif_orientation(&body[6..]);
                if let Some(o) = orientation.filter(|&o| o != 1 && !orientation_kept) {
                    out.extend_from_slice(&orientation_only_exif(o));
                    orientation_kept = true;
                }
            }
            0xE0 | 0xEE => out.extend_from_slice(segment),
            0xE2 if body.starts_with(b"ICC_PROFILE\0") => out.extend_from_slice(segment),
            0xE1..=0xEF | 0xFE => {}
            _ => out.extend_from_slice(segment),
        }
        i = end;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a
            // stuffed 0xFF00 or a restart marker.
            let start = i;
            let mut k = i;
            loop {
                k += b.get(k..)?.iter().position(|&x| x == 0xFF)?;
                match *b.get(k + 1)? {
                    0x00 | 0xD0..=0xD7 => k += 2,
                    0xFF => k += 1,
                    _ => break,
                }
            }
            out.extend_from_slice(&b[start..k]);
            i = k;
        }
    }
}

/// The orientation tag (0x0112) of an EXIF block's first directory.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let big = match tiff.get(0..4)? {
        b"MM\0*" => true,
        b"II*\0" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let x = tiff.get(at..at + 2)?;
        Some(if big { u16::from_be_bytes([x[0], x[1]]) } else { u16::from_le_bytes([x[0], x[1]]) })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let x = tiff.get(at..at + 4)?;
        let x = [x[0], x[1], x[2], x[3]];
        Some(if big { u32::from_be_bytes(x) } else { u32::from_le_bytes(x) })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count).find_map(|n| {
        let entry = ifd + 2 + n * 12;
        (u16_at(entry)? == 0x0112 && u16_at(entry + 2)? == 3).then(|| u16_at(entry + 8)).flatten()
    })
}

/// An APP1 segment whose EXIF holds the orientation and nothing else.
fn orientation_only_exif(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::with_capacity(26);
    tiff.extend_from_slice(b"MM\0*");
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let len = (2 + 6 + tiff.len()) as u16;
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&len.to_be_bytes());
    segment.extend_from_slice(b"Exif\0\0");
    segment.extend_from_slice(&tiff);
    segment
}

/// PNG: the signature and chunks; EXIF (`eXIf`), text (`tEXt`, `zTXt`,
/// `iTXt`, where XMP lives too) and the time (`tIME`) are dropped. Nothing
/// after `IEND` is kept.
fn strip_png(b: &[u8]) -> Option<Vec<u8>> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !b.starts_with(SIGNATURE) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(SIGNATURE);
    let mut i = SIGNATURE.len();
    loop {
        let len = usize::try_from(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?)).ok()?;
        let end = i.checked_add(12)?.checked_add(len)?;
        let chunk = b.get(i..end)?;
        let kind = &chunk[4..8];
        if !matches!(kind, b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt" | b"tIME") {
            out.extend_from_slice(chunk);
        }
        if kind == b"IEND" {
            return Some(out);
        }
        i = end;
    }
}

/// WebP: a RIFF of chunks; `EXIF` and `XMP ` are dropped, their flags in
/// `VP8X` cleared and the RIFF size fixed.
fn strip_webp(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WEBP" {
        return None;
    }
    let riff_end = usize::try_from(u32::from_le_bytes(b[4..8].try_into().ok()?)).ok()?.checked_add(8)?;
    let body = b.get(12..riff_end)?;
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
    let mut i = 0;
    while i < body.len() {
        let len = usize::try_from(u32::from_le_bytes(body.get(i + 4..i + 8)?.try_into().ok()?)).ok()?;
        let end = i.checked_add(8)?.checked_add(len)?.checked_add(len & 1)?.min(body.len());
        let chunk = body.get(i..end)?;
        match &chunk[0..4] {
            b"EXIF" | b"XMP " => {}
            b"VP8X" if chunk.len() > 8 => {
                let at = out.len() + 8;
                out.extend_from_slice(chunk);
                out[at] &= !(0x08 | 0x04);
            }
            _ => out.extend_from_slice(chunk),
        }
        i = end;
    }
    let size = u32::try_from(out.len() - 8).ok()?;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG made by the `image` crate, with an EXIF block (GPS and camera
    /// make, orientation 6), an XMP block and a comment spliced in after SOI.
    fn jpeg_with_metadata(width: u32, height: u32) -> Vec<u8> {
        let picture =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        let mut plain = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut plain).encode_image(&picture).unwrap();
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&3u16.to_le_bytes());
        for (tag, kind, value) in [(0x010Fu16, 2u16, *b"Cam\0"), (0x0112, 3, [6, 0, 0, 0]), (0x8825, 4, [0, 0, 0, 0])] {
            tiff.extend_from_slice(&tag.to_le_bytes());
            tiff.extend_from_slice(&kind.to_le_bytes());
            tiff.extend_from_slice(&(if kind == 2 { 4u32 } else { 1 }).to_le_bytes());
            tiff.extend_from_slice(&value);
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(b"GPS 52.52N 13.40E");
        let mut exif = b"Exif\0\0".to_vec();
        exif.extend_from_slice(&tiff);
        let segment = |marker: u8, body: &[u8]| {
            let mut s = vec![0xFF, marker];
            s.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
            s.extend_from_slice(body);
            s
        };
        let mut out = plain[..2].to_vec();
        out.extend(segment(0xE1, &exif));
        out.extend(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>GPS</x:xmpmeta>"));
        out.extend(segment(0xFE, b"shot at home"));
        out.extend_from_slice(&plain[2..]);
        out.extend_from_slice(b"\xFF\xD8trailing picture with GPS");
        out
    }

    #[test]
    fn a_jpeg_loses_its_metadata_but_keeps_its_orientation_and_pixels() {
        let original = jpeg_with_metadata(64, 48);
        let stripped = strip_metadata("image/jpeg", &original).expect("something to strip");
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(find(&original, b"GPS") && find(&original, b"Cam"));
        assert!(!find(&stripped, b"GPS"), "GPS data is gone");
        assert!(!find(&stripped, b"Cam\0") && !find(&stripped, b"shot at home") && !find(&stripped, b"xmpmeta"));
        let exif_start = stripped.windows(6).position(|w| w == b"Exif\0\0").expect("an orientation-only EXIF");
        assert_eq!(exif_orientation(&stripped[exif_start + 6..]), Some(6));
        assert!(stripped.ends_with(&[0xFF, 0xD9]), "nothing after EOI");
        let a = image::load_from_memory(&original).unwrap().to_rgb8();
        let b = image::load_from_memory(&stripped).unwrap().to_rgb8();
        assert_eq!(a, b, "the pixels are the same");
        assert_eq!(strip_metadata("image/jpeg", &stripped), None, "stripping twice changes nothing");
    }

    #[test]
    fn a_png_loses_its_text_time_and_exif_chunks() {
        let picture = image::RgbImage::from_pixel(10, 10, image::Rgb([1, 2, 3]));
        let mut png = Vec::new();
        picture.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend_from_slice(kind);
            c.extend_from_slice(data);
            c.extend_from_slice(&[0; 4]);
            c
        };
        let mut with = png[..33].to_vec();
        with.extend(chunk(b"tEXt", b"Location\0Berlin"));
        with.extend(chunk(b"eXIf", b"MM\0*GPS"));
        with.extend_from_slice(&png[33..]);
        let stripped = strip_metadata("image/png", &with).expect("something to strip");
        assert_eq!(stripped, png);
        assert_eq!(strip_metadata("image/png", &png), None);
    }

    #[test]
    fn a_webp_loses_its_exif_and_xmp_chunks_and_their_flags() {
        let mut vp8x = vec![0x08 | 0x04 | 0x10, 0, 0, 0];
        vp8x.extend_from_slice(&[9, 0, 0, 9, 0, 0]);
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = kind.to_vec();
            c.extend_from_slice(&(data.len() as u32).to_le_bytes());
            c.extend_from_slice(data);
            if data.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let riff = |chunks: &[Vec<u8>]| {
            let body: Vec<u8> = chunks.concat();
            let mut out = b"RIFF".to_vec();
            out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
            out.extend_from_slice(b"WEBP");
            out.extend(body);
            out
        };
        let image = chunk(b"VP8L", b"pixels");
        let with = riff(&[chunk(b"VP8X", &vp8x), image.clone(), chunk(b"EXIF", b"GPS!!"), chunk(b"XMP ", b"<x/>")]);
        vp8x[0] = 0x10;
        let want = riff(&[chunk(b"VP8X", &vp8x), image]);
        assert_eq!(strip_metadata("image/webp", &with), Some(want));
    }

    #[test]
    fn broken_or_other_files_are_left_alone() {
        assert_eq!(strip_metadata("image/jpeg", b"\xFF\xD8\xFF\xE1\x00"), None);
        assert_eq!(strip_metadata("image/png", b"\x89PNG\r\n\x1a\n\0\0\xFF\xFFIHDR"), None);
        assert_eq!(strip_metadata("application/pdf", b"%PDF-1.7"), None);
    }

    #[test]
    fn a_preview_is_small_upright_and_refused_for_too_many_pixels() {
        let original = jpeg_with_metadata(640, 400);
        let p = preview(&original, 50_000_000).unwrap();
        // Orientation 6 turns it a quarter: portrait.
        assert_eq!((p.width, p.height), (200, 320));
        assert_eq!(infer::get(&p.jpeg).map(|k| k.mime_type()), Some("image/jpeg"));
        assert_eq!(
            preview(&original, 100_000),
            Err(NoPreview::TooManyPixels { width: 640, height: 400, limit: 100_000 })
        );
        assert_eq!(preview(&jpeg_with_metadata(300, 200), 50_000_000), Err(NoPreview::Small));
        assert!(matches!(preview(b"\x89PNG\r\n\x1a\nnot really", 1000), Err(NoPreview::Undecodable(_))));
    }
}
