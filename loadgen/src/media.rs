//! The `media` scenario: what transfers cost and what they do to chat.
//!
//! 1. Chat alone: S1 (`dm-pairs`, open loop at `rate`), before any transfer
//!    (a finished upload's writeback would still slow the log's fsyncs).
//! 2. The raw-QUIC baseline: `size` bytes up and down one bare quinn stream
//!    in this process ([`crate::relay::raw_transfer`]).
//! 3. natter: one upload of `size` bytes over a transfer stream, then its
//!    download, timed; natterd's resident memory sampled during the upload.
//! 4. Chat again while another upload of `size` bytes runs, started as the
//!    senders start. The measured chat window should lie inside the upload;
//!    the report says whether it did.
//!
//! The bytes are made as they are sent (an MP4 header, then noise), never
//! held whole: 1 GiB costs the loadgen no memory.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use natter_client::transfer::{digest, UploadSpec};
use natter_client::Client;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use crate::{dm_pairs, dm_pairs_with, users, Counters, Pace, Report, Target, Timing};

/// `size` bytes that natterd takes for a video: an `ftyp` box, then noise
/// from `seed` (each seed its own bytes, so uploads never deduplicate).
pub struct Video {
    seed: u64,
    size: u64,
    pos: u64,
}

const FTYP: [u8; 24] = *b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2";

impl Video {
    pub fn new(seed: u64, size: u64) -> Self {
        Self { seed, size, pos: 0 }
    }

    fn byte_block(&self, word: u64) -> [u8; 8] {
        // splitmix64 of (seed, word index)
        let mut z = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ word.wrapping_add(0x6A09_E667_F3BC_C909);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl AsyncRead for Video {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.size - self.pos) as usize;
        let out = buf.initialize_unfilled_to(n);
        let start = self.pos;
        let mut i = 0;
        while i < n {
            let at = start + i as u64;
            if at < FTYP.len() as u64 {
                out[i] = FTYP[at as usize];
                i += 1;
                continue;
            }
            let block = self.byte_block(at / 8);
            let from = (at % 8) as usize;
            let take = (8 - from).min(n - i);
            out[i..i + take].copy_from_slice(&block[from..from + take]);
            i += take;
        }
        buf.advance(n);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for Video {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let to = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = to.filter(|&n| n <= self.size).ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// What the scenario measured.
pub struct MediaReport {
    pub size: u64,
    pub raw_up: Duration,
    pub raw_down: Duration,
    pub up: Duration,
    pub down: Duration,
    /// natterd's resident bytes before the lone upload and the most seen
    /// during it (with `--server-pid`).
    pub rss_before: Option<u64>,
    pub rss_peak: Option<u64>,
    pub chat_alone: Report,
    pub chat_during: Report,
    /// The upload beside chat, and whether it outlasted the measured window.
    pub up_during: Duration,
    pub covered: bool,
}

fn mib_per_s(size: u64, d: Duration) -> f64 {
    size as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

impl MediaReport {
    pub fn rss_growth(&self) -> Option<u64> {
        Some(self.rss_peak?.saturating_sub(self.rss_before?))
    }

    fn p99(r: &Report) -> u64 {
        r.ack.value_at_quantile(0.99)
    }

    pub fn table(&self) -> String {
        let size = self.size;
        let ratio = |natter: Duration, raw: Duration| 100.0 * raw.as_secs_f64() / natter.as_secs_f64().max(1e-9);
        let mut out = format!("media: {} MiB per transfer\n", size / (1024 * 1024));
        out.push_str(&format!(
            "{:<10}{:>14}{:>14}{:>10}\n{:<10}{:>14.1}{:>14.1}{:>9.0}%\n{:<10}{:>14.1}{:>14.1}{:>9.0}%\n",
            "MiB/s",
            "natter",
            "raw QUIC",
            "of raw",
            "upload",
            mib_per_s(size, self.up),
            mib_per_s(size, self.raw_up),
            ratio(self.up, self.raw_up),
            "download",
            mib_per_s(size, self.down),
            mib_per_s(size, self.raw_down),
            ratio(self.down, self.raw_down),
        ));
        match (self.rss_before, self.rss_growth()) {
            (Some(before), Some(growth)) => out.push_str(&format!(
                "natterd RSS: {:.1} MiB before the upload, +{:.1} MiB at most during it\n",
                before as f64 / 1048576.0,
                growth as f64 / 1048576.0
            )),
            _ => out.push_str("natterd RSS: not measured (pass --server-pid)\n"),
        }
        out.push_str(&format!(
            "chat send→ack p99: {} µs alone, {} µs during an upload ({:.2}×; upload {:.1} s at {:.1} MiB/s, {})\n",
            Self::p99(&self.chat_alone),
            Self::p99(&self.chat_during),
            Self::p99(&self.chat_during) as f64 / Self::p99(&self.chat_alone).max(1) as f64,
            self.up_during.as_secs_f64(),
            mib_per_s(size, self.up_during),
            if self.covered {
                "it outlasted the window"
            } else {
                "it ended inside the window: use a shorter --duration"
            }
        ));
        out.push_str("-- chat alone\n");
        out.push_str(&self.chat_alone.table());
        out.push_str("-- chat during the upload\n");
        out.push_str(&self.chat_during.table());
        out
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "media",
            "size_bytes": self.size,
            "upload_mib_s": mib_per_s(self.size, self.up),
            "download_mib_s": mib_per_s(self.size, self.down),
            "raw_up_mib_s": mib_per_s(self.size, self.raw_up),
            "raw_down_mib_s": mib_per_s(self.size, self.raw_down),
            "rss_before_bytes": self.rss_before,
            "rss_growth_bytes": self.rss_growth(),
            "chat_alone": self.chat_alone.json(),
            "chat_during": self.chat_during.json(),
            "upload_during_s": self.up_during.as_secs_f64(),
            "upload_covered_window": self.covered,
        })
    }
}

/// Samples `pid`'s resident memory every 50 ms until `stop`; the most seen.
fn sample_rss(pid: Option<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Option<u64>> {
    tokio::spawn(async move {
        let pid = pid?;
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(rss) = crate::rss_of(pid) {
                peak = peak.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(peak)
    })
}

async fn upload(client: &Client, conversation: &str, seed: u64, size: u64) -> anyhow::Result<(String, Duration)> {
    let (sha256, _) = digest(&mut Video::new(seed, size)).await?;
    let spec = UploadSpec {
        conversation_id: conversation.into(),
        file_name: format!("bench-{seed}.mp4"),
        size,
        sha256,
        upload_id: None,
    };
    let started = Instant::now();
    let media = client
        .upload(&spec, &mut Video::new(seed, size), |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("upload refused: {e} (a large --size needs NATTER_MEDIA_MAX_FILE_BYTES and NATTER_MEDIA_QUOTA_BYTES to match)"))?;
    Ok((media.media_id, started.elapsed()))
}

/// Runs the scenario (see the module doc).
///
/// # Errors
/// Setup failures, refused transfers.
pub async fn media(
    target: &Target,
    size: u64,
    chat_users: usize,
    rate: f64,
    timing: Timing,
    server_pid: Option<u32>,
    counters: Arc<Counters>,
) -> anyhow::Result<MediaReport> {
    // Chat alone first: the uploads' writeback would still slow its fsyncs.
    let pace = Pace::Open { rate };
    let chat_alone = dm_pairs(target, chat_users, pace, timing, 64, counters.clone()).await?;
    let (raw_up, raw_down) = crate::relay::raw_transfer(size, &mut Video::new(1, size)).await?;

    let pair = users(target, "media", 2).await?;
    let dm = pair[0].client.open_direct(&pair[1].email).await?.conversation_id;
    let rss_before = server_pid.and_then(crate::rss_of);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(server_pid, stop.clone());
    let (media_id, up) = upload(&pair[0].client, &dm, 2, size).await?;
    stop.store(true, Ordering::Relaxed);
    let rss_peak = sampler.await.context("rss sampler")?;
    let started = Instant::now();
    let mut sink = tokio::io::sink();
    pair[0].client.download(&media_id, 0, 0, &mut sink, |_| {}).await?;
    let down = started.elapsed();

    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let uploader = &pair[0].client;
    let beside = async {
        ready.await.context("chat never started")?;
        let window_end = Instant::now() + timing.warmup + timing.duration;
        upload(uploader, &dm, 3, size).await.map(|(_, took)| (took, Instant::now() >= window_end))
    };
    let chat = dm_pairs_with(target, chat_users, pace, timing, 64, counters, move || {
        let _ = go.send(());
    });
    let (chat_during, beside) = tokio::join!(chat, beside);
    let chat_during = chat_during?;
    let (up_during, covered) = beside?;
    Ok(MediaReport {
        size,
        raw_up,
        raw_down,
        up,
        down,
        rss_before,
        rss_peak,
        chat_alone,
        chat_during,
        up_during,
        covered,
    })
}
