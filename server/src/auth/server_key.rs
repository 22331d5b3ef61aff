//! The server's secret key: it seals secrets kept at rest (TOTP secrets, with
//! AES-256-GCM bound to their owner) and keys the HMACs of one-time codes, so a
//! copy of the database alone reveals neither.
//!
//! The key is 32 bytes, kept as one line of 64 hex characters in
//! `<data_dir>/secret.key` (generated on first start, mode 0600) or in the file
//! named by `[auth] secret_key_file`, which must already exist. Nothing is derived
//! from it directly: sealing, HMACs and the key id each use their own subkey
//! (HMAC-SHA256 of the key over a fixed label).
//!
//! Must never: log, `Debug`-print or put into an error the key or anything derived
//! from it except [`ServerKey::key_id`] (errors name the file and what is wrong
//! with it, never its content); generate a key when one is configured; read a key
//! file that group or others can access; write a key file that is, even briefly,
//! readable by anyone but its owner; replace an existing key file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The key file's name in the data directory, when none is configured.
pub const KEY_FILE_NAME: &str = "secret.key";
/// Bytes in the key.
pub const KEY_LEN: usize = 32;
/// The first byte of every sealed value: the format (AES-256-GCM, random 96-bit
/// nonce, this byte and the caller's aad authenticated).
const SEAL_V1: u8 = 1;
const TAG_LEN: usize = 16;
const SEAL_HEADER: usize = 1 + NONCE_LEN;
/// A key file is 64 characters and a newline; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 1024;

const AEAD_LABEL: &[u8] = b"natter server key v1: aes-256-gcm";
const HMAC_LABEL: &[u8] = b"natter server key v1: hmac-sha256";
const KEY_ID_LABEL: &[u8] = b"natter server key v1: key id";

/// Why the server key could not be loaded or made. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ServerKeyError {
    #[error(
        "server key file {path} (auth.secret_key_file) does not exist, and a configured key is never generated: \
         create it with `openssl rand -hex 32 > {path} && chmod 600 {path}`, or unset auth.secret_key_file to use \
         <data_dir>/secret.key"
    )]
    Missing { path: PathBuf },
    // The cause is the source, not in the message: reports print the chain once.
    #[error("server key file {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("server key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "server key file {path} can be accessed by group or others (mode {mode:03o}); it must be private to \
         natterd's user: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "server key file {path} is not hex: it must hold one line of 64 hex characters (a 32-byte key), as made by \
         `openssl rand -hex 32`; a file of 32 raw bytes converts with `xxd -p -c64`"
    )]
    NotHex { path: PathBuf },
    #[error(
        "server key file {path} holds {found} characters, not the 64 hex characters of a 32-byte key: make one \
         with `openssl rand -hex 32`"
    )]
    WrongLength { path: PathBuf, found: u64 },
    #[error("the system random number generator failed while generating {path}")]
    Random { path: PathBuf },
}

/// Why a sealed value could not be opened. Deliberately unspecific beyond its
/// shape: a wrong key, a wrong aad and tampering are indistinguishable by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed value is too short")]
    Truncated,
    #[error("sealed value has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("sealed value does not authenticate: tampered with, bound to another owner, or sealed with another key")]
    Unauthentic,
}

/// The server's secret key, ready to seal, open and MAC. `Debug` prints only the
/// key id.
#[derive(Clone)]
pub struct ServerKey {
    aead: LessSafeKey,
    mac: hmac::Key,
    id: [u8; 32],
}

impl ServerKey {
    /// The configured key file if there is one (it must exist and be valid: it is
    /// never generated), otherwise `<data_dir>/secret.key`, generated on first start.
    ///
    /// # Errors
    /// A configured file that is missing; a key file that is unreadable, not a
    /// regular file, accessible by group or others, not hex or not 64 characters
    /// (an existing file is never replaced); IO failures while generating.
    pub fn load_or_generate(data_dir: &Path, configured: Option<&Path>) -> Result<Self, ServerKeyError> {
        match Self::load(data_dir, configured) {
            Err(ServerKeyError::Missing { .. }) if configured.is_none() => {
                generate_key_file(&data_dir.join(KEY_FILE_NAME))
            }
            other => other,
        }
    }

    /// The key natterd would use, without generating one (operator tools).
    ///
    /// # Errors
    /// As [`Self::load_or_generate`], and `Missing` when natterd never started
    /// on `data_dir`.
    pub fn load(data_dir: &Path, configured: Option<&Path>) -> Result<Self, ServerKeyError> {
        read_key_file(&configured.map_or_else(|| data_dir.join(KEY_FILE_NAME), Path::to_owned))
    }

    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let aead = UnboundKey::new(&AES_256_GCM, &derive(bytes, AEAD_LABEL)).expect("a 32-byte AES-256 key");
        Self {
            aead: LessSafeKey::new(aead),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &derive(bytes, HMAC_LABEL)),
            id: derive(bytes, KEY_ID_LABEL),
        }
    }

    /// Encrypts and authenticates `plaintext`, bound to `aad` (who the value belongs
    /// to, e.g. `totp:<user id>`): [`Self::open`] with any other aad fails, so a
    /// sealed value cannot be moved to another owner. Layout: version byte, 12-byte
    /// random nonce, ciphertext, 16-byte tag. Random nonces are safe for far more
    /// values than one server seals (AES-GCM's bound is about 2^32 per key).
    ///
    /// # Panics
    /// If the system random number generator fails.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system random number generator failed");
        let mut sealed = Vec::with_capacity(SEAL_HEADER + plaintext.len() + TAG_LEN);
        sealed.push(SEAL_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_aad(SEAL_V1, aad)),
                &mut sealed[SEAL_HEADER..],
            )
            .expect("plaintext within AES-GCM's 64 GiB limit");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// Decrypts what [`Self::seal`] made with the same key and the same `aad`.
    ///
    /// # Errors
    /// [`OpenError`]: too short, an unknown version, or it does not authenticate
    /// (another key, another aad, any changed bit).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_HEADER + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        if sealed[0] != SEAL_V1 {
            return Err(OpenError::UnknownVersion(sealed[0]));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..SEAL_HEADER]).map_err(|_| OpenError::Truncated)?;
        let mut buf = sealed[SEAL_HEADER..].to_vec();
        let plaintext_len = self
            .aead
            .open_in_place(nonce, Aad::from(bound_aad(SEAL_V1, aad)), &mut buf)
            .map_err(|_| OpenError::Unauthentic)?
            .len();
        buf.truncate(plaintext_len);
        Ok(buf)
    }

    /// HMAC-SHA256 of `data` for one `purpose` (e.g. `"email-code"`): the same data
    /// under two purposes gives unrelated values. The purpose is length-prefixed,
    /// so no (purpose, data) pair can collide with another.
    pub fn hmac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(&(purpose.len() as u64).to_be_bytes());
        ctx.update(purpose.as_bytes());
        ctx.update(data);
        ctx.sign().as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// A public fingerprint of the key (64 hex characters), to be stored beside the
    /// secrets it sealed so that starting with a different key is detected instead
    /// of every open failing. Reveals nothing about the key.
    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

/// A subkey: HMAC-SHA256 of the key over a fixed label.
fn derive(key: &[u8; KEY_LEN], label: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), label);
    tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// What the AEAD authenticates besides the ciphertext: the format version, then the
/// caller's aad.
fn bound_aad(version: u8, aad: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(1 + aad.len());
    bound.push(version);
    bound.extend_from_slice(aad);
    bound
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerKeyError + '_ {
    move |source| ServerKeyError::Io { path: path.to_owned(), source }
}

/// Reads and checks a key file; [`ServerKeyError::Missing`] when it does not exist.
fn read_key_file(path: &Path) -> Result<ServerKey, ServerKeyError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServerKeyError::Missing { path: path.to_owned() });
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    // Checked on the open file, so the file read is the file checked.
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(ServerKeyError::NotAFile { path: path.to_owned() });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ServerKeyError::Permissions { path: path.to_owned(), mode });
        }
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(ServerKeyError::WrongLength { path: path.to_owned(), found: meta.len() });
    }
    let mut content = Vec::with_capacity(2 * KEY_LEN + 1);
    (&mut file).take(MAX_KEY_FILE_BYTES).read_to_end(&mut content).map_err(io_err(path))?;
    let bytes = parse_key(path, &content)?;
    Ok(ServerKey::from_bytes(&bytes))
}

/// One line of 64 hex characters (either case), whitespace around it ignored.
fn parse_key(path: &Path, content: &[u8]) -> Result<[u8; KEY_LEN], ServerKeyError> {
    let text = content.trim_ascii();
    if !text.iter().all(u8::is_ascii_hexdigit) {
        return Err(ServerKeyError::NotHex { path: path.to_owned() });
    }
    let mut bytes = [0u8; KEY_LEN];
    if text.len() != 2 * KEY_LEN {
        return Err(ServerKeyError::WrongLength { path: path.to_owned(), found: text.len() as u64 });
    }
    hex::decode_to_slice(text, &mut bytes).map_err(|_| ServerKeyError::NotHex { path: path.to_owned() })?;
    Ok(bytes)
}

/// Makes a new key file at `path`: written to a private temporary file (created
/// with mode 0600), fsynced, then linked into place, which fails rather than
/// replacing a file that appeared meanwhile (that one is read instead); the
/// directory is fsynced so the name survives a crash.
fn generate_key_file(path: &Path) -> Result<ServerKey, ServerKeyError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut bytes).map_err(|_| ServerKeyError::Random { path: path.to_owned() })?;

    let tmp = dir.join(format!(".{KEY_FILE_NAME}.{}.tmp", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let written = write_private_new(&tmp, format!("{}\n", hex::encode(bytes)).as_bytes());
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    });
    // The temporary name goes whatever happened; a failure to remove it is harmless.
    let _ = std::fs::remove_file(&tmp);
    if !linked? {
        return read_key_file(path);
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    tracing::info!(
        path = %path.display(),
        "generated the server secret key; back it up with the data: secrets sealed with it cannot be read without it"
    );
    Ok(ServerKey::from_bytes(&bytes))
}

/// Creates `path` (which must not exist) readable by its owner only, writes and
/// fsyncs it.
fn write_private_new(path: &Path, content: &[u8]) -> Result<(), ServerKeyError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(io_err(path))?;
    file.write_all(content).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    const KEY_A: [u8; KEY_LEN] = [0x11; KEY_LEN];
    const KEY_B: [u8; KEY_LEN] = [0x22; KEY_LEN];

    /// Writes a key file with `mode` (unix), as an operator would.
    fn write_key_file(path: &Path, content: &[u8], mode: u32) {
        std::fs::write(path, content).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        #[cfg(not(unix))]
        let _ = mode;
    }

    fn hex_line(bytes: &[u8; KEY_LEN]) -> Vec<u8> {
        format!("{}\n", hex::encode(bytes)).into_bytes()
    }

    #[test]
    fn generated_on_first_start_then_reloaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerKey::load_or_generate(dir.path(), None).unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.len(), 65, "64 hex characters and a newline");
        assert!(content.ends_with('\n') && content.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let second = ServerKey::load_or_generate(dir.path(), None).unwrap();
        assert_eq!(first.key_id(), second.key_id());
        let sealed = first.seal(b"totp secret", b"totp:u1");
        assert_eq!(second.open(&sealed, b"totp:u1").unwrap(), b"totp secret");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content, "reloading does not rewrite");
        // The file holds the key itself: loading it by hand gives the same key.
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(content.trim_end(), &mut bytes).unwrap();
        assert_eq!(ServerKey::from_bytes(&bytes).key_id(), first.key_id());
        // Only the key file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [KEY_FILE_NAME]);
    }

    #[test]
    fn two_data_directories_get_different_keys() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ka = ServerKey::load_or_generate(a.path(), None).unwrap();
        let kb = ServerKey::load_or_generate(b.path(), None).unwrap();
        assert_ne!(ka.key_id(), kb.key_id());
    }

    #[test]
    fn a_missing_data_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("not").join("yet");
        ServerKey::load_or_generate(&data, None).unwrap();
        assert!(data.join(KEY_FILE_NAME).is_file());
    }

    #[test]
    fn a_configured_key_is_read_and_wins_over_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let generated = ServerKey::load_or_generate(dir.path(), None).unwrap();
        let configured = dir.path().join("configured.key");
        write_key_file(&configured, &hex_line(&KEY_A), 0o600);
        let key = ServerKey::load_or_generate(dir.path(), Some(&configured)).unwrap();
        assert_eq!(key.key_id(), ServerKey::from_bytes(&KEY_A).key_id());
        assert_ne!(key.key_id(), generated.key_id());
    }

    #[test]
    fn what_operators_type_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let lower = hex::encode(KEY_A);
        for content in [format!("{lower}\n"), lower.clone(), lower.to_uppercase(), format!("{lower}\r\n")] {
            write_key_file(&path, content.as_bytes(), 0o600);
            let key = ServerKey::load_or_generate(dir.path(), Some(&path)).unwrap();
            assert_eq!(key.key_id(), ServerKey::from_bytes(&KEY_A).key_id(), "{content:?}");
        }
        #[cfg(unix)]
        {
            write_key_file(&path, lower.as_bytes(), 0o400);
            ServerKey::load_or_generate(dir.path(), Some(&path)).expect("read-only for the owner is fine");
        }
    }

    #[test]
    fn a_configured_key_that_is_missing_is_an_error_and_nothing_is_generated() {
        let dir = tempfile::tempdir().unwrap();
        let configured = dir.path().join("missing.key");
        let err = ServerKey::load_or_generate(dir.path(), Some(&configured)).unwrap_err();
        assert!(matches!(&err, ServerKeyError::Missing { path } if path == &configured), "{err}");
        let message = err.to_string();
        assert!(message.contains(&configured.display().to_string()), "{message}");
        assert!(message.contains("openssl rand -hex 32") && message.contains("chmod 600"), "{message}");
        assert!(!configured.exists());
        assert!(!dir.path().join(KEY_FILE_NAME).exists());
    }

    #[test]
    fn wrong_length_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let hex = hex::encode(KEY_A);
        for (content, found) in [(&hex[..62], 62), (&format!("{hex}ab")[..], 66), ("", 0), ("\n", 0)] {
            write_key_file(&path, content.as_bytes(), 0o600);
            let err = ServerKey::load_or_generate(dir.path(), Some(&path)).unwrap_err();
            assert!(matches!(err, ServerKeyError::WrongLength { found: f, .. } if f == found), "{content:?}: {err}");
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()) && message.contains("64 hex"), "{message}");
        }
        write_key_file(&path, &vec![b'a'; 10_000], 0o600);
        let err = ServerKey::load_or_generate(dir.path(), Some(&path)).unwrap_err();
        assert!(matches!(err, ServerKeyError::WrongLength { found: 10_000, .. }), "{err}");
    }

    #[test]
    fn not_hex_is_refused_by_name_without_echoing_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let mut almost = hex::encode(KEY_A);
        almost.replace_range(10..11, "g");
        let two_lines = format!("{}\n{}\n", &hex::encode(KEY_A)[..32], &hex::encode(KEY_A)[32..]);
        for content in [almost.as_bytes(), &KEY_B[..], b"0x1111", two_lines.as_bytes()] {
            write_key_file(&path, content, 0o600);
            let err = ServerKey::load_or_generate(dir.path(), Some(&path)).unwrap_err();
            assert!(matches!(err, ServerKeyError::NotHex { .. }), "{content:?}: {err}");
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()) && message.contains("xxd -p -c64"), "{message}");
            assert!(!message.contains(&almost), "{message}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_open_to_group_or_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o610, 0o777] {
            write_key_file(&path, &hex_line(&KEY_A), mode);
            let err = ServerKey::load_or_generate(dir.path(), Some(&path)).unwrap_err();
            assert!(matches!(err, ServerKeyError::Permissions { mode: m, .. } if m == mode), "{mode:o}: {err}");
            let message = err.to_string();
            assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
            assert!(message.contains(&format!("{mode:03o}")), "{message}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_bad_generated_key_file_is_refused_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        ServerKey::load_or_generate(dir.path(), None).unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ServerKey::load_or_generate(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        write_key_file(&path, b"truncated", 0o600);
        let err = ServerKey::load_or_generate(dir.path(), None).unwrap_err();
        assert!(matches!(err, ServerKeyError::NotHex { .. } | ServerKeyError::WrongLength { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"truncated");
    }

    #[test]
    fn unreadable_paths_are_io_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the key file should be.
        let err = ServerKey::load_or_generate(dir.path(), Some(dir.path())).unwrap_err();
        assert!(matches!(err, ServerKeyError::NotAFile { .. }), "{err}");
        // A path through a regular file cannot be opened (ENOTDIR), whoever we are.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let through = file.join("secret.key");
        let err = ServerKey::load_or_generate(dir.path(), Some(&through)).unwrap_err();
        assert!(matches!(&err, ServerKeyError::Io { path, .. } if path == &through), "{err}");
        assert!(err.to_string().contains(&through.display().to_string()));
        // A regular file as the data directory fails the same way.
        let err = ServerKey::load_or_generate(&file, None).unwrap_err();
        assert!(matches!(err, ServerKeyError::Io { .. }), "{err}");
    }

    #[test]
    fn seal_then_open_round_trips() {
        let key = ServerKey::from_bytes(&KEY_A);
        for plaintext in [&b""[..], b"x", &[0xa5; 20], &[7; 1000]] {
            for aad in [&b""[..], b"totp:0192f0c1-user"] {
                let sealed = key.seal(plaintext, aad);
                assert_eq!(sealed.len(), 1 + 12 + plaintext.len() + 16);
                assert_eq!(sealed[0], SEAL_V1);
                assert_eq!(key.open(&sealed, aad).unwrap(), plaintext);
            }
        }
    }

    #[test]
    fn the_ciphertext_does_not_contain_the_plaintext() {
        let key = ServerKey::from_bytes(&KEY_A);
        let plaintext = b"a very recognisable secret";
        let sealed = key.seal(plaintext, b"");
        assert!(!sealed.windows(8).any(|w| plaintext.windows(8).any(|p| p == w)));
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let key = ServerKey::from_bytes(&KEY_A);
        let a = key.seal(b"same", b"owner");
        let b = key.seal(b"same", b"owner");
        assert_ne!(a, b);
        assert_ne!(a[1..SEAL_HEADER], b[1..SEAL_HEADER], "fresh nonce");
    }

    #[test]
    fn open_with_another_aad_fails() {
        let key = ServerKey::from_bytes(&KEY_A);
        let sealed = key.seal(b"secret", b"totp:alice");
        for other in [&b"totp:bob"[..], b"", b"totp:alice ", b"totp:alic"] {
            assert_eq!(key.open(&sealed, other), Err(OpenError::Unauthentic), "{other:?}");
        }
    }

    #[test]
    fn open_with_another_key_fails() {
        let sealed = ServerKey::from_bytes(&KEY_A).seal(b"secret", b"owner");
        assert_eq!(ServerKey::from_bytes(&KEY_B).open(&sealed, b"owner"), Err(OpenError::Unauthentic));
    }

    #[test]
    fn any_flipped_bit_fails() {
        let key = ServerKey::from_bytes(&KEY_A);
        let sealed = key.seal(b"secret", b"owner");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[i] ^= 1 << bit;
                let expected =
                    if i == 0 { OpenError::UnknownVersion(SEAL_V1 ^ (1 << bit)) } else { OpenError::Unauthentic };
                assert_eq!(key.open(&tampered, b"owner"), Err(expected), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn short_or_cut_input_fails() {
        let key = ServerKey::from_bytes(&KEY_A);
        let sealed = key.seal(b"secret", b"owner");
        for len in 0..sealed.len() {
            let err = key.open(&sealed[..len], b"owner").unwrap_err();
            let expected = if len < SEAL_HEADER + TAG_LEN { OpenError::Truncated } else { OpenError::Unauthentic };
            assert_eq!(err, expected, "length {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(key.open(&longer, b"owner"), Err(OpenError::Unauthentic));
    }

    #[test]
    fn hmac_depends_on_purpose_data_and_key() {
        let a = ServerKey::from_bytes(&KEY_A);
        let b = ServerKey::from_bytes(&KEY_B);
        assert_eq!(a.hmac("email-code", b"123456"), a.hmac("email-code", b"123456"), "deterministic");
        assert_ne!(a.hmac("email-code", b"123456"), a.hmac("recovery-code", b"123456"));
        assert_ne!(a.hmac("email-code", b"123456"), a.hmac("email-code", b"123457"));
        assert_ne!(a.hmac("email-code", b"123456"), b.hmac("email-code", b"123456"));
        // The boundary between purpose and data is part of what is MACed.
        assert_ne!(a.hmac("ab", b"c"), a.hmac("a", b"bc"));
        assert_ne!(a.hmac("", b"x"), a.hmac("x", b""));
    }

    #[test]
    fn key_id_is_stable_public_hex_and_differs_by_key() {
        let a = ServerKey::from_bytes(&KEY_A);
        let id = a.key_id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, ServerKey::from_bytes(&KEY_A).key_id());
        assert_ne!(id, ServerKey::from_bytes(&KEY_B).key_id());
        assert_ne!(id, hex::encode(KEY_A), "not the key itself");
    }

    /// The sealed format, the key id and the HMACs are stored: they must never change
    /// by accident (a changed label or layout would make every stored value useless).
    /// The values were checked independently (Python's `hmac` and `cryptography`
    /// AESGCM over the documented derivation and layout).
    #[test]
    fn stored_formats_are_stable() {
        let key = ServerKey::from_bytes(&KEY_A);
        assert_eq!(key.key_id(), GOLDEN_KEY_ID);
        let sealed = hex::decode(GOLDEN_SEALED).unwrap();
        assert_eq!(key.open(&sealed, b"totp:golden").unwrap(), b"golden plaintext");
        assert_eq!(hex::encode(key.hmac("golden", b"data")), GOLDEN_HMAC);
    }

    const GOLDEN_KEY_ID: &str = "2ff13021f72cb8c283fe925cb3b046bad3dc9b10f590b6e5c41b21a5a8e681e5";
    const GOLDEN_SEALED: &str =
        "01392f13c4e34b7ac10aba7dacbb38373d446e7f9e7f626366acb153ed2b47f7cf5ee3f4189579a9ca79033fdf";
    const GOLDEN_HMAC: &str = "5f236ee3b1939aae456395375b434ad9fcb36ef1c33cc36e043b729316534599";

    #[test]
    fn debug_prints_the_key_id_only() {
        let key = ServerKey::from_bytes(&KEY_A);
        let printed = format!("{key:?}");
        assert!(printed.contains(&key.key_id()), "{printed}");
        assert!(!printed.contains(&hex::encode(KEY_A)), "{printed}");
        assert!(!printed.contains(&hex::encode(derive(&KEY_A, AEAD_LABEL))), "{printed}");
        assert!(!printed.contains(&hex::encode(derive(&KEY_A, HMAC_LABEL))), "{printed}");
    }
}
