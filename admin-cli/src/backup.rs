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
use natter_server::config::{masked_url, split_url_password, Config, StoreBackend};
use natter_server::store::postgres::{database_is_empty, ExportedSnapshot};
use natter_server::store::sqlite::{copy_database, SqliteConfig, SqliteStore};
use natter_server::store::Store;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `manifest.json` says first: the layout this code writes and reads.
const FORMAT: &str = "natter-backup/1";
const MANIFEST: &str = "manifest.json";
/// A PostgreSQL deployment's database, as `pg_dump --format=custom` writes it.
const PG_DUMP: &str = "natter.pgdump";
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
    /// `sqlite` or `postgres`.
    pub store: String,
    /// The log position the copy holds everything up to.
    pub position: u64,
    /// The log's events up to there, and their digest ([`log_digest`]).
    pub events: u64,
    pub log_sha256: String,
    /// How many read-model answers the copy gives, and their digest (the
    /// embedded store's copy is a store: it is asked; a PostgreSQL dump is
    /// checked after its restore by replaying its log instead).
    pub answers: Option<usize>,
    pub answers_sha256: Option<String>,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub files: Vec<FileEntry>,
}

/// What a backup or a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub position: u64,
    pub events: u64,
    pub files: usize,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Read-model answers recorded (backup) or found as they should be (restore).
    pub answers: usize,
}

impl Report {
    fn of(m: &Manifest, answers: usize) -> Self {
        Self {
            position: m.position,
            events: m.events,
            files: m.files.len(),
            blobs: m.blobs,
            blob_bytes: m.blob_bytes,
            answers,
        }
    }
}

/// A digest of a log up to `upto`: every event's position, stream, version,
/// id, time and encoding, in order. `read` gives the events after a position.
async fn log_digest<F, Fut>(mut read: F, upto: u64) -> anyhow::Result<(u64, String)>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<
        Output = Result<Vec<natter_server::store::RecordedEvent>, natter_server::store::StoreError>,
    >,
{
    let mut hash = sha2::Sha256::new();
    let (mut after, mut count) = (0, 0);
    'pages: loop {
        let page = read(after).await?;
        if page.is_empty() {
            break;
        }
        for e in page {
            if e.position > upto {
                break 'pages;
            }
            let (ty, schema, payload) = natter_server::store::codec::encode(&e.event);
            hash.update(e.position.to_be_bytes());
            hash.update(e.stream.as_str().as_bytes());
            hash.update([0]);
            hash.update(e.version.to_be_bytes());
            hash.update(e.id.as_bytes());
            hash.update(e.recorded_at.0.to_be_bytes());
            hash.update(ty.as_bytes());
            hash.update([0]);
            hash.update(schema.to_be_bytes());
            hash.update((payload.len() as u64).to_be_bytes());
            hash.update(&payload);
            after = e.position;
            count += 1;
        }
    }
    Ok((count, hex::encode(hash.finalize())))
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

/// Makes a file readable by its owner only.
fn owner_only(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
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
/// refers to is missing (collected meanwhile: run it again), `pg_dump`
/// failed, or a write failed.
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<Report> {
    if !is_empty_dir(to)? {
        bail!("{} is not empty: back up into a new directory", to.display());
    }
    let data_dir = &config.data_dir;
    let mut paths = Vec::new();
    let (store, position, (events, log_sha256), answers, referenced) = match config.store.backend {
        StoreBackend::Sqlite => {
            let log = SqliteConfig::in_dir(data_dir).path;
            if !log.exists() {
                bail!("{} holds no natter database (is this a natterd data directory?)", data_dir.display());
            }
            make_private_dir(to)?;
            for name in DATABASES {
                let src = data_dir.join(name);
                if src.exists() {
                    copy_database(&src, &to.join(name)).with_context(|| format!("copying {}", src.display()))?;
                    owner_only(&to.join(name))?;
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
            let log = log_digest(|after| copy.read_all(after, 2000), position).await?;
            let answers = answers_digest(&copy).await?;
            let referenced = all_media_blobs(|after| copy.media_blobs(after, 1000)).await?;
            copy.shutdown().await;
            ("sqlite", position, log, Some(answers), referenced)
        }
        StoreBackend::Postgres => {
            let url = config.store.url.as_deref().context("store.backend is postgres but store.url is not set")?;
            make_private_dir(to)?;
            let snapshot = ExportedSnapshot::open(url).await.context("connecting to PostgreSQL")?;
            let dump = to.join(PG_DUMP);
            let status = pg_tool("pg_dump", url)
                .args(["--format=custom", "--no-owner", "--snapshot", &snapshot.id, "--file"])
                .arg(&dump)
                .status()
                .await
                .context("running pg_dump (is PostgreSQL's client installed?)")?;
            if !status.success() {
                bail!("pg_dump failed ({status}); nothing usable was written to {}", to.display());
            }
            tokio::fs::File::open(&dump).await?.sync_all().await?;
            owner_only(&dump)?;
            paths.push(PG_DUMP.to_owned());
            let position = snapshot.head;
            let log = log_digest(|after| snapshot.read_all(after, 2000), position).await?;
            let referenced = all_media_blobs(|after| snapshot.media_blobs(after, 1000)).await?;
            snapshot.finish().await;
            ("postgres", position, log, None, referenced)
        }
    };
    let blobs = natter_server::blob::open(&config.blob, data_dir).context("opening the blob store")?;
    make_private_dir(&to.join("blobs"))?;
    let (mut count, mut bytes) = (0, 0);
    for (sha, size) in referenced {
        let rel = format!("blobs/{}", hex::encode(sha));
        copy_blob(blobs.as_ref(), BlobId(sha), size, &to.join(&rel)).await?;
        paths.push(rel);
        count += 1;
        bytes += size;
    }
    sync_dir(&to.join("blobs"))?;

    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let (size, sha256) = digest_file(&to.join(&path)).await?;
        files.push(FileEntry { path, size, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        natter_version: env!("CARGO_PKG_VERSION").into(),
        created_at_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64,
        store: store.into(),
        position,
        events,
        log_sha256,
        answers: answers.as_ref().map(|a| a.0),
        answers_sha256: answers.map(|a| a.1),
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
    Ok(Report::of(&manifest, manifest.answers.unwrap_or(0)))
}

/// Every blob the media rows refer to, through `page` (after a SHA-256).
async fn all_media_blobs<F, Fut>(mut page: F) -> anyhow::Result<Vec<([u8; 32], u64)>>
where
    F: FnMut(Option<[u8; 32]>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<([u8; 32], u64)>, natter_server::store::StoreError>>,
{
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let blobs = page(after).await?;
        let Some(last) = blobs.last() else { return Ok(all) };
        after = Some(last.0);
        all.extend(blobs);
    }
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
    owner_only(dest)?;
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

/// Where a backup is restored to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new (or empty) data directory: the embedded store's files and keys.
    DataDir(PathBuf),
    /// An empty PostgreSQL database (`pg_restore`).
    Postgres(String),
}

/// Restores the backup in `from` into `target`, with media into the blob
/// store `blob` describes under `data_dir` (fs by default: files in the data
/// directory), then checks the restored store: its log equals the backup's
/// (the digest) and it gives every read-model answer the backup's copy gave
/// (embedded), or the answers a replay of its log gives (PostgreSQL).
///
/// # Errors
/// A damaged backup (nothing is written then), a used target, a backup of
/// the other backend, `pg_restore` failed, a write failed, or an answer differs.
pub async fn restore(from: &Path, target: &Target, blob: &BlobConfig, data_dir: &Path) -> anyhow::Result<Report> {
    let manifest = verify(from).await?;
    let backend = match target {
        Target::DataDir(_) => "sqlite",
        Target::Postgres(_) => "postgres",
    };
    if manifest.store != backend {
        bail!(
            "{} is a backup of a {} deployment; restore it into one (--data-dir or --to-url)",
            from.display(),
            manifest.store
        );
    }
    match target {
        Target::DataDir(dir) => {
            if !is_empty_dir(dir)? {
                bail!("{} is not empty: restore into a new data directory (nothing was overwritten)", dir.display());
            }
            make_private_dir(dir)?;
        }
        Target::Postgres(url) => {
            if !database_is_empty(url).await.context("connecting to PostgreSQL")? {
                bail!(
                    "the database {} holds tables: restore into a new, empty database (nothing was overwritten)",
                    masked_url(url)
                );
            }
        }
    }
    make_private_dir(data_dir)?;
    let blobs = natter_server::blob::open(blob, data_dir).context("opening the blob store")?;
    for f in &manifest.files {
        let src = from.join(&f.path);
        if let Some(hex) = f.path.strip_prefix("blobs/") {
            let id = BlobId::from_hex(hex).with_context(|| format!("damaged backup: {} is no blob name", f.path))?;
            let mut body = tokio::fs::File::open(&src).await?;
            blobs.put(id, f.size, &mut body).await.with_context(|| format!("storing {}", f.path))?;
        } else if f.path == PG_DUMP {
            let Target::Postgres(url) = target else { unreachable!("checked above") };
            let status = pg_tool("pg_restore", url)
                .args(["--no-owner", "--exit-on-error", "--single-transaction"])
                .arg(&src)
                .status()
                .await
                .context("running pg_restore (is PostgreSQL's client installed?)")?;
            if !status.success() {
                bail!("pg_restore failed ({status}); the database was left as it was (one transaction)");
            }
        } else {
            let dest = data_dir.join(&f.path);
            if let Some(parent) = dest.parent() {
                make_private_dir(parent)?;
            }
            copy_private(&src, &dest)?;
        }
    }
    sync_dir(data_dir)?;
    let store: std::sync::Arc<dyn Store> = match target {
        Target::DataDir(dir) => {
            std::sync::Arc::new(SqliteStore::open(&SqliteConfig::in_dir(dir)).context("opening the restored store")?)
        }
        Target::Postgres(url) => std::sync::Arc::new(crate::open_postgres(url).await?),
    };
    let result = check_restored(store.as_ref(), &manifest).await;
    store.shutdown().await;
    Ok(Report::of(&manifest, result?))
}

/// The restored store's log and answers against the manifest; returns how
/// many answers were compared.
async fn check_restored(store: &dyn Store, manifest: &Manifest) -> anyhow::Result<usize> {
    let (events, log) = log_digest(|after| store.read_all(after, 2000), u64::MAX).await?;
    if (events, log.as_str()) != (manifest.events, manifest.log_sha256.as_str()) {
        bail!(
            "the restored log is not the backup's ({events} events, digest {log}; the backup: {}, {}): keep the \
             backup, and report this",
            manifest.events,
            manifest.log_sha256
        );
    }
    match (&manifest.answers, &manifest.answers_sha256) {
        (Some(want), Some(want_digest)) => {
            let (answers, digest) = answers_digest(store).await?;
            if (answers, &digest) != (*want, want_digest) {
                bail!(
                    "the restored store answers otherwise than the backup did ({answers} answers, digest {digest}; \
                     the backup: {want}, {want_digest}): keep the backup, and report this"
                );
            }
            Ok(answers)
        }
        // Read models rebuilt from the restored log answer as restored.
        _ => crate::rebuild_store(store).await,
    }
}

/// `pg_dump` or `pg_restore` on `url` (`--dbname`), its password in the environment.
fn pg_tool(program: &str, url: &str) -> tokio::process::Command {
    // The password in PGPASSWORD, never on the command line (which every user
    // of the machine can read).
    let (url, password) = split_url_password(url);
    let mut cmd = tokio::process::Command::new(program);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.arg("--dbname").arg(url);
    cmd
}
