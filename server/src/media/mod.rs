//! What natterd accepts as media: the type read from the bytes (magic
//! numbers, the `infer` crate; never the name), an allow-list, the size limit
//! and the per-user quota. The bytes themselves live in the blob store
//! (`crate::blob`); transfers are `session::media`.

pub mod gc;
pub mod mp4;
pub mod picture;

use serde::{Deserialize, Serialize};

/// Bytes of a file's start that decide its type.
pub const SNIFF_BYTES: usize = 8192;

/// `[media]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest file, in bytes (default 100 MiB).
    pub max_file_bytes: u64,
    /// What one user's uploads may take in all, in bytes (default 1 GiB).
    pub quota_bytes: u64,
    /// Accepted types: exact (`application/pdf`) or a family (`image/`).
    pub allowed_types: Vec<String>,
    /// Uploads at most this many at once per connection.
    pub transfers_per_connection: u32,
    /// How long a `GetMediaUrl` URL works, in seconds (S3 store).
    pub url_expiry_secs: u64,
    /// Remove location and camera metadata (EXIF, XMP, IPTC) from stored
    /// JPEG, PNG and WebP images.
    pub strip_metadata: bool,
    /// Images with more pixels are stored but not decoded (no preview): the
    /// limit against decompression bombs.
    pub max_image_pixels: u64,
    /// Uploads no message sent within this many seconds are discarded.
    pub unsent_ttl_secs: u64,
    /// How often the collector runs, in seconds.
    pub gc_interval_secs: u64,
    /// Stored bytes younger than this many seconds are never collected (an
    /// upload may be about to refer to them).
    pub gc_grace_secs: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            allowed_types: [
                "image/",
                "video/",
                "audio/",
                "application/pdf",
                "text/plain",
                "application/zip",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                "application/vnd.ms-excel",
                "application/vnd.ms-powerpoint",
                "application/vnd.oasis.opendocument.text",
                "application/vnd.oasis.opendocument.spreadsheet",
                "application/vnd.oasis.opendocument.presentation",
                "application/rtf",
                "application/epub+zip",
            ]
            .map(str::to_owned)
            .to_vec(),
            transfers_per_connection: 4,
            url_expiry_secs: 300,
            strip_metadata: true,
            max_image_pixels: 50_000_000,
            unsent_ttl_secs: 86_400,
            gc_interval_secs: 600,
            gc_grace_secs: 3_600,
        }
    }
}

impl MediaConfig {
    /// # Errors
    /// A message naming the `media.*` key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_file_bytes == 0 {
            return Err("media.max_file_bytes must be at least 1".into());
        }
        if !(1..=7 * 86_400).contains(&self.url_expiry_secs) {
            return Err("media.url_expiry_secs must be 1 to 604800 (S3 allows at most 7 days)".into());
        }
        if self.max_image_pixels == 0 {
            return Err("media.max_image_pixels must be at least 1".into());
        }
        if self.unsent_ttl_secs < 60 || self.gc_interval_secs == 0 {
            return Err("media.unsent_ttl_secs must be at least 60 and media.gc_interval_secs at least 1".into());
        }
        if self.transfers_per_connection == 0 {
            return Err("media.transfers_per_connection must be at least 1".into());
        }
        if let Some(bad) = self.allowed_types.iter().find(|t| !t.contains('/') || t.starts_with('/')) {
            return Err(format!("media.allowed_types: {bad:?} is not a type (\"image/png\") or family (\"image/\")"));
        }
        Ok(())
    }

    /// How long before discarding an unsent upload natterd stops accepting it
    /// in a message: the collector never discards media a send is still
    /// deciding on (a 24th of the time to live: one hour of a day).
    pub fn send_deadline(&self) -> std::time::Duration {
        let ttl = self.unsent_ttl_secs * 1000;
        std::time::Duration::from_millis(ttl - ttl / 24)
    }

    /// Whether `mime` is on the allow-list.
    pub fn allows(&self, mime: &str) -> bool {
        self.allowed_types.iter().any(|t| if t.ends_with('/') { mime.starts_with(t.as_str()) } else { mime == t })
    }
}

/// The type of a file from its first bytes ([`SNIFF_BYTES`] or all of a
/// smaller file): what its magic numbers say, else `text/plain` for UTF-8
/// text, else `application/octet-stream`.
pub fn detect(head: &[u8]) -> &'static str {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type();
    }
    // A cut at SNIFF_BYTES may split a character: judge what is complete.
    let text = match std::str::from_utf8(head) {
        Ok(t) => Some(t),
        Err(e) if e.error_len().is_none() && head.len() >= SNIFF_BYTES => {
            std::str::from_utf8(&head[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(t) if !t.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}')) => "text/plain",
        _ => "application/octet-stream",
    }
}

/// A `Content-Disposition` naming the file: an ASCII fallback, and the name
/// itself in RFC 5987 form.
pub fn attachment(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let mut encoded = String::new();
    for b in file_name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Image dimensions from the header, when the type is one whose header is
/// read here (PNG, GIF, JPEG, WebP); `(0, 0)` otherwise.
pub fn image_size(mime: &str, head: &[u8]) -> (u32, u32) {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let le16 = |b: &[u8]| u32::from(u16::from_le_bytes([b[0], b[1]]));
    match mime {
        "image/png" if head.len() >= 24 && &head[12..16] == b"IHDR" => (be32(&head[16..20]), be32(&head[20..24])),
        "image/gif" if head.len() >= 10 => (le16(&head[6..8]), le16(&head[8..10])),
        "image/webp" if head.len() >= 30 && &head[12..16] == b"VP8X" => {
            let w = u32::from_le_bytes([head[24], head[25], head[26], 0]) + 1;
            let h = u32::from_le_bytes([head[27], head[28], head[29], 0]) + 1;
            (w, h)
        }
        "image/jpeg" => jpeg_size(head).unwrap_or((0, 0)),
        _ => (0, 0),
    }
}

/// Walks JPEG segments to the first start-of-frame marker.
fn jpeg_size(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let sof = matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if sof {
            let h = u32::from(u16::from_be_bytes([b[i + 5], b[i + 6]]));
            let w = u32::from(u16::from_be_bytes([b[i + 7], b[i + 8]]));
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_1X2: &[u8] = &[
        0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 0, 1, 0, 0, 0, 2, 8,
        6, 0, 0, 0,
    ];

    #[test]
    fn the_type_comes_from_the_bytes() {
        assert_eq!(detect(PNG_1X2), "image/png");
        assert_eq!(detect(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), "application/pdf");
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
        elf.resize(64, 0);
        assert_eq!(detect(&elf), "application/x-executable");
        assert_eq!(detect(b"MZ\x90\0\x03\0\0\0\x04\0\0\0\xff\xff"), "application/vnd.microsoft.portable-executable");
        assert_eq!(detect("plain text, ünïcödé\n".as_bytes()), "text/plain");
        assert_eq!(detect(b"\0\x01\x02binary"), "application/octet-stream");
        // A multi-byte character cut at the sniff boundary is still text.
        let mut long = "a".repeat(SNIFF_BYTES - 1).into_bytes();
        long.push(0xC3);
        assert_eq!(detect(&long[..SNIFF_BYTES]), "text/plain");
    }

    #[test]
    fn the_allow_list_takes_families_and_exact_types() {
        let c = MediaConfig::default();
        assert!(c.allows("image/png") && c.allows("video/mp4") && c.allows("application/pdf"));
        assert!(!c.allows("application/x-executable"));
        assert!(!c.allows("application/vnd.microsoft.portable-executable"));
        assert!(!c.allows("application/pdfx"));
        assert!(c.validate().is_ok());
        let bad = MediaConfig { allowed_types: vec!["png".into()], ..MediaConfig::default() };
        assert!(bad.validate().unwrap_err().contains("media.allowed_types"));
    }

    #[test]
    fn attachments_name_the_file_safely() {
        assert_eq!(attachment("a b.pdf"), "attachment; filename=\"a b.pdf\"; filename*=UTF-8''a%20b.pdf");
        assert_eq!(attachment("q\"é.png"), "attachment; filename=\"q__.png\"; filename*=UTF-8''q%22%C3%A9.png");
    }

    #[test]
    fn image_sizes_are_read_from_headers() {
        assert_eq!(image_size("image/png", PNG_1X2), (1, 2));
        let gif = b"GIF89a\x40\x01\xf0\x00";
        assert_eq!(image_size("image/gif", gif), (320, 240));
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC0, 0, 17, 8, 0x01, 0xE0, 0x02, 0x80, 3, 0];
        assert_eq!(image_size("image/jpeg", &jpeg), (640, 480));
        assert_eq!(image_size("application/pdf", b"%PDF"), (0, 0));
    }
}
