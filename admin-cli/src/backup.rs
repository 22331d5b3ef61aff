//! `natter-admin backup` and `restore`: a deployment copied while natterd
//! serves, and put back into a new data directory, checked.
//!
//! A backup directory holds `manifest.json` and the files it lists with their
//! size and SHA-256: the store as of one commit (`natter.db`, copied by
//! `VACUUM INTO` in one read transaction, with `auth.db` and `mls.db` beside
//! it), the server key and generated certificate when they live in the data
//! directory, and under `blobs/` every blob a media row of that copy refers
//! to (read through the configured blob store, so fs and s3 alike). The
//! manifest also holds the log position of the copy and a digest of every
//! read-model answer it gives (`snapshot`), which a restore must reproduce.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use natter_server::blob::{BlobConfig, BlobId};
use natter_server::config::{Config, StoreBackend};
use natter_server::store::sqlite::{copy_database, SqliteConfig, SqliteStore};
use natter_server::store::Store;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `manifest.json` says first: the layout this code writes and reads.
const FORMAT: &str = "natter-backup/1";
const MANIFEST: &str = "manifest.json";
/// The SQLite files of a data directory, the log's first.
const DATABASES: [&str; 3] =
    ["natter.db", natter_server::store::auth_state::sqlite::FILE, natter_server::mls::sqlite::FILE];

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the backup directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub natter_version: String,
    pub created_at_ms: u64,
    /// `sqlite`.
    pub store: String,
    /// The log position the copy holds everything up to.
    pub position: u64,
    /// How many read-model answers the copy gives, and their digest.
    pub answers: usize,
    pub answers_sha256: String,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub files: Vec<FileEntry>,
}

/// What a backup or a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub position: u64,
    pub files: usize,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub answers: usize,
}

impl From<&Manifest> for Report {
    fn from(m: &Manifest) -> Self {
        Self {
            position: m.position,
            files: m.files.len(),
            blobs: m.blobs,
            blob_bytes: m.blob_bytes,
            answers: m.answers,
        }
    }
}

/// Every read-model answer of `store`, as a count and a digest.
async fn answers_digest(store: &dyn Store) -> anyhow::Result<(usize, String)> {
    let snapshot = crate::snapshot(store).await?;
    let mut hash = sha2::Sha256::new();
    for (question, answer) in &snapshot.answers {
        hash.update(question.as_bytes());
        hash.update([0]);
        hash.update(answer.as_bytes());
        hash.update([b'\n']);
    }
    Ok((snapshot.answers.len(), hex::encode(hash.finalize())))
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// A directory only its owner may enter (a backup holds the server key).
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Size and SHA-256 of a file.
async fn digest_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = tokio::fs::File::open(path).await.with_context(|| format!("reading {}", path.display()))?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut size = 0;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok((size, hex::encode(hash.finalize())));
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
}

/// Copies a small file (a key, a certificate) with owner-only permissions, synced.
fn copy_private(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(dest).with_context(|| format!("writing {}", dest.display()))?;
    std::io::Write::write_all(&mut f, &bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The files besides the databases that a data directory holds and a
/// restore needs: (path in the data directory, path in the backup).
fn key_files(config: &Config) -> Vec<(PathBuf, String)> {
    let dir = &config.data_dir;
    let mut files = Vec::new();
    if config.auth.secret_key_file.is_none() {
        files.push((dir.join(natter_server::auth::server_key::KEY_FILE_NAME), "secret.key".to_owned()));
    }
    if config.tls.cert.is_none() {
        for name in ["ca.pem", "cert.pem", "key.pem"] {
            files.push((dir.join("tls").join(name), format!("tls/{name}")));
        }
    }
    files.into_iter().filter(|(src, _)| src.exists()).collect()
}

/// Backs up the deployment `config` describes into `to` (new or empty)
/// while natterd serves it.
///
/// # Errors
/// `to` is not empty, the store or a blob cannot be read, a blob a media row
/// refers to is missing (collected meanwhile: run it again), or a write failed.
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<Report> {
    if config.store.backend != StoreBackend::Sqlite {
        bail!("backup of a PostgreSQL deployment is not built yet: use pg_dump -Fc (see README) and copy the media");
    }
    if !is_empty_dir(to)? {
        bail!("{} is not empty: back up into a new directory", to.display());
    }
    let data_dir = &config.data_dir;
    let log = SqliteConfig::in_dir(data_dir).path;
    if !log.exists() {
        bail!("{} holds no natter database (is this a natterd data directory?)", data_dir.display());
    }
    make_private_dir(to)?;
    let mut paths = Vec::new();
    for name in DATABASES {
        let src = data_dir.join(name);
        if src.exists() {
            copy_database(&src, &to.join(name)).with_context(|| format!("copying {}", src.display()))?;
            paths.push(name.to_owned());
        }
    }
    for (src, rel) in key_files(config) {
        if let Some(parent) = to.join(&rel).parent() {
            make_private_dir(parent)?;
        }
        copy_private(&src, &to.join(&rel))?;
        paths.push(rel);
    }

    // The copy, not the live store, says what the backup holds.
    let copy = SqliteStore::open_read_only(&to.join(DATABASES[0])).context("opening the copy")?;
    let position = copy.head().await?;
    let (answers, answers_sha256) = answers_digest(&copy).await?;
    let blobs = natter_server::blob::open(&config.blob, data_dir).context("opening the blob store")?;
    make_private_dir(&to.join("blobs"))?;
    let (mut count, mut bytes, mut after) = (0, 0, None);
    loop {
        let page = copy.media_blobs(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        for (sha, size) in page {
            let rel = format!("blobs/{}", hex::encode(sha));
            copy_blob(blobs.as_ref(), BlobId(sha), size, &to.join(&rel)).await?;
            paths.push(rel);
            count += 1;
            bytes += size;
        }
    }
    sync_dir(&to.join("blobs"))?;
    copy.shutdown().await;

    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let (size, sha256) = digest_file(&to.join(&path)).await?;
        files.push(FileEntry { path, size, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        natter_version: env!("CARGO_PKG_VERSION").into(),
        created_at_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        store: "sqlite".into(),
        position,
        answers,
        answers_sha256,
        blobs: count,
        blob_bytes: bytes,
        files,
    };
    // Written last: a backup without a manifest is an unfinished one.
    let tmp = to.join("manifest.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, to.join(MANIFEST))?;
    sync_dir(to)?;
    Ok(Report::from(&manifest))
}

/// Copies one blob into `dest`, checking its size and SHA-256 on the way.
async fn copy_blob(
    blobs: &dyn natter_server::blob::BlobStore,
    blob: BlobId,
    size: u64,
    dest: &Path,
) -> anyhow::Result<()> {
    let hex = blob.to_hex();
    let mut read = match blobs.get(blob, None).await {
        Ok(read) => read,
        Err(natter_server::blob::BlobError::NotFound) => bail!(
            "blob {hex} of a stored upload is not in the blob store (collected while the backup ran?): run the backup again"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading blob {hex}")),
    };
    let mut out = tokio::fs::File::create(dest).await.with_context(|| format!("writing {}", dest.display()))?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut copied = 0;
    loop {
        let n = read.body.read(&mut buf).await.with_context(|| format!("reading blob {hex}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
        copied += n as u64;
    }
    if copied != size || <[u8; 32]>::from(hash.finalize()) != blob.0 {
        bail!("blob {hex} read back as other bytes than stored ({copied} of {size} bytes): the blob store is damaged");
    }
    out.sync_all().await?;
    Ok(())
}

/// Reads and checks a backup: the manifest, then every file it lists (size
/// and SHA-256), before anything is written anywhere.
///
/// # Errors
/// No manifest, another format, or a file missing or damaged (named).
pub async fn verify(from: &Path) -> anyhow::Result<Manifest> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path)
        .with_context(|| format!("{} has no {MANIFEST}: not a natter backup, or an unfinished one", from.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))?;
    if manifest.format != FORMAT {
        bail!("{} is a {:?} backup; this natter-admin reads {FORMAT:?}", from.display(), manifest.format);
    }
    for f in &manifest.files {
        if f.path.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            bail!("damaged backup: the manifest names {:?}, which is not a path inside the backup", f.path);
        }
        let (size, sha256) =
            digest_file(&from.join(&f.path)).await.with_context(|| format!("damaged backup: {} is missing", f.path))?;
        if (size, sha256.as_str()) != (f.size, f.sha256.as_str()) {
            bail!("damaged backup: {} is not what was backed up ({size} bytes, SHA-256 {sha256}; the manifest says {} bytes, {})", f.path, f.size, f.sha256);
        }
    }
    Ok(manifest)
}

/// Restores the backup in `from` into `data_dir` (new or empty), with media
/// into the blob store `blob` describes there (default: files in the data
/// directory), then checks that the restored store gives every answer the
/// backup's copy gave.
///
/// # Errors
/// A damaged backup (nothing is written then), `data_dir` not empty, a write
/// failed, or an answer differs.
pub async fn restore(from: &Path, data_dir: &Path, blob: &BlobConfig) -> anyhow::Result<Report> {
    if !is_empty_dir(data_dir)? {
        bail!("{} is not empty: restore into a new data directory (nothing was overwritten)", data_dir.display());
    }
    let manifest = verify(from).await?;
    make_private_dir(data_dir)?;
    let blobs = natter_server::blob::open(blob, data_dir).context("opening the blob store")?;
    for f in &manifest.files {
        let src = from.join(&f.path);
        if let Some(hex) = f.path.strip_prefix("blobs/") {
            let id = BlobId::from_hex(hex).with_context(|| format!("damaged backup: {} is no blob name", f.path))?;
            let mut body = tokio::fs::File::open(&src).await?;
            blobs.put(id, f.size, &mut body).await.with_context(|| format!("storing {}", f.path))?;
        } else {
            let dest = data_dir.join(&f.path);
            if let Some(parent) = dest.parent() {
                make_private_dir(parent)?;
            }
            copy_private(&src, &dest)?;
        }
    }
    sync_dir(data_dir)?;
    let store = SqliteStore::open(&SqliteConfig::in_dir(data_dir)).context("opening the restored store")?;
    let result = answers_digest(&store).await;
    store.shutdown().await;
    let (answers, digest) = result?;
    if (answers, digest.as_str()) != (manifest.answers, manifest.answers_sha256.as_str()) {
        bail!(
            "the restored store answers otherwise than the backup did ({answers} answers, digest {digest}; the \
             backup: {}, {}): keep the backup, and report this",
            manifest.answers,
            manifest.answers_sha256
        );
    }
    Ok(Report::from(&manifest))
}
