//! The raw-QUIC baseline: a tiny relay that does what natterd does for a direct
//! message minus everything natter adds (auth, log, fsync, fan-out, protobuf):
//! a client sends a frame naming a peer, the relay forwards it on the peer's
//! stream and acknowledges it to the sender. Measured with the same closed-loop
//! pairs as `dm-pairs`, on the same box, it tells what fraction of "what QUIC
//! itself can do here" natter reaches.
//!
//! This module (benchmark tooling) is the one place outside `server::transport`
//! and `client` that uses quinn directly, on purpose: it must not go through
//! natter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{Report, Timing};

const ALPN: &[u8] = b"natter-relay-bench";
/// Frame kinds: client → relay `SEND dest seq len payload`; relay → client
/// `DELIVER seq len payload` (to the peer) and `ACK seq` (to the sender).
const SEND: u8 = 1;
const DELIVER: u8 = 2;
const ACK: u8 = 3;
/// relay → client, once: the client is registered and can receive.
const REGISTERED: u8 = 4;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A bare quinn server endpoint (TLS 1.3, a fresh self-signed certificate for
/// `localhost`, quinn's default transport settings).
fn server_endpoint(listen: SocketAddr, alpn: &[u8]) -> anyhow::Result<(quinn::Endpoint, CertificateDer<'static>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let der = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok((quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), listen)?, der))
}

/// A bare quinn client endpoint that trusts `cert`.
fn client_endpoint(cert: CertificateDer<'static>, alpn: &[u8]) -> anyhow::Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let client_config = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

/// Starts the relay on `listen`; returns its address and certificate.
///
/// # Errors
/// Certificate or socket setup.
pub fn start_relay(listen: SocketAddr) -> anyhow::Result<(SocketAddr, CertificateDer<'static>, quinn::Endpoint)> {
    let (endpoint, der) = server_endpoint(listen, ALPN)?;
    let addr = endpoint.local_addr()?;
    let peers: Arc<Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>> = Arc::default();
    let accept = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let peers = peers.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
                let Ok(id) = recv.read_u32().await else { return };
                let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
                peers.lock().expect("peers").insert(id, tx.clone());
                // Tell the client it can be reached now.
                let _ = tx.send(vec![REGISTERED]).await;
                tokio::spawn(async move {
                    while let Some(frame) = rx.recv().await {
                        if send.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
                while let Ok(kind) = recv.read_u8().await {
                    if kind != SEND {
                        return;
                    }
                    let (Ok(dest), Ok(seq), Ok(len)) =
                        (recv.read_u32().await, recv.read_u64().await, recv.read_u32().await)
                    else {
                        return;
                    };
                    let mut payload = vec![0; len.min(1 << 20) as usize];
                    if recv.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let to = peers.lock().expect("peers").get(&dest).cloned();
                    if let Some(to) = to {
                        let mut f = Vec::with_capacity(13 + payload.len());
                        f.push(DELIVER);
                        f.extend_from_slice(&seq.to_be_bytes());
                        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                        f.extend_from_slice(&payload);
                        let _ = to.send(f).await;
                    }
                    let mut ack = vec![ACK];
                    ack.extend_from_slice(&seq.to_be_bytes());
                    if tx.send(ack).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, der, endpoint))
}

/// Closed-loop pairs over the relay: each of `users` sends to its partner with
/// `in_flight` outstanding, like `dm-pairs`.
///
/// # Errors
/// Connection setup.
pub async fn relay_pairs(
    relay: SocketAddr,
    cert: CertificateDer<'static>,
    users: usize,
    in_flight: usize,
    timing: Timing,
    text_size: usize,
) -> anyhow::Result<Report> {
    let endpoint = client_endpoint(cert, ALPN)?;

    let start = Instant::now();
    let measure_from = timing.warmup;
    let until = start + timing.warmup + timing.duration;
    let ack = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let deliver = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let (sends, deliveries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (total_sends, total_deliveries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    // Everyone registers before anyone sends, so no frame finds its peer missing.
    let mut links = Vec::with_capacity(users);
    for id in 0..users as u32 {
        let conn = endpoint.connect(relay, "localhost")?.await.context("connecting to the relay")?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_u32(id).await?;
        anyhow::ensure!(recv.read_u8().await? == REGISTERED, "the relay did not register us");
        links.push((id, conn, send, recv));
    }
    for (id, conn, mut send, mut recv) in links {
        let partner = id ^ 1;
        // seq → send instant, for acks and deliveries of our own messages.
        let sent_at: Arc<Mutex<HashMap<u64, Duration>>> = Arc::default();
        let window = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        let (ack, deliver, sends, deliveries, total_sends, total_deliveries) = (
            ack.clone(),
            deliver.clone(),
            sends.clone(),
            deliveries.clone(),
            total_sends.clone(),
            total_deliveries.clone(),
        );
        let reader_sent_at = sent_at.clone();
        let reader_window = window.clone();
        tasks.push(tokio::spawn(async move {
            // Reader: acks free a window slot; deliveries carry the send time.
            while let Ok(kind) = recv.read_u8().await {
                let Ok(seq) = recv.read_u64().await else { return };
                match kind {
                    ACK => {
                        let at = reader_sent_at.lock().expect("sent").remove(&seq);
                        total_sends.fetch_add(1, Ordering::Relaxed);
                        if let Some(at) = at.filter(|a| *a >= measure_from) {
                            sends.fetch_add(1, Ordering::Relaxed);
                            let us = (start.elapsed() - at).as_micros() as u64;
                            let _ = ack.lock().expect("hist").record(us.max(1));
                        }
                        reader_window.add_permits(1);
                    }
                    DELIVER => {
                        let Ok(len) = recv.read_u32().await else { return };
                        let mut payload = vec![0; len as usize];
                        if recv.read_exact(&mut payload).await.is_err() {
                            return;
                        }
                        total_deliveries.fetch_add(1, Ordering::Relaxed);
                        let at = Duration::from_nanos(u64::from_be_bytes(payload[..8].try_into().unwrap_or_default()));
                        if at >= measure_from {
                            deliveries.fetch_add(1, Ordering::Relaxed);
                            let us = start.elapsed().saturating_sub(at).as_micros() as u64;
                            let _ = deliver.lock().expect("hist").record(us.max(1));
                        }
                    }
                    _ => return,
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < until {
                let Ok(permit) = window.acquire().await else { return };
                permit.forget();
                seq += 1;
                let at = start.elapsed();
                sent_at.lock().expect("sent").insert(seq, at);
                let mut payload = (at.as_nanos() as u64).to_be_bytes().to_vec();
                payload.resize(text_size.max(8), b'x');
                let mut f = Vec::with_capacity(17 + payload.len());
                f.push(SEND);
                f.extend_from_slice(&partner.to_be_bytes());
                f.extend_from_slice(&seq.to_be_bytes());
                f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                f.extend_from_slice(&payload);
                if send.write_all(&f).await.is_err() {
                    return;
                }
            }
            // Let the last acks arrive, then close.
            tokio::time::sleep(Duration::from_millis(300)).await;
            conn.close(0u32.into(), b"done");
        }));
    }
    let measure_start = start + timing.warmup;
    tokio::time::sleep_until((until + Duration::from_millis(500)).into()).await;
    let measured = until.saturating_duration_since(measure_start);
    for t in tasks {
        t.abort();
    }
    let report = Report {
        scenario: "quic-relay",
        elapsed: measured,
        sends: sends.load(Ordering::Relaxed),
        deliveries: deliveries.load(Ordering::Relaxed),
        total_sends: total_sends.load(Ordering::Relaxed),
        total_deliveries: total_deliveries.load(Ordering::Relaxed),
        fanout: 1,
        ack: ack.lock().expect("hist").clone(),
        deliver: deliver.lock().expect("hist").clone(),
        errors: Default::default(),
    };
    Ok(report)
}

const BULK_ALPN: &[u8] = b"natter-bulk-bench";
/// Bulk stream requests: upload (the client sends until it finishes; the
/// sink answers the count) and download (the client names a count).
const BULK_UP: u8 = b'U';
const BULK_DOWN: u8 = b'D';
const CHUNK: usize = 64 * 1024;

/// The raw-QUIC baseline for transfers: `size` bytes up one bidirectional
/// stream to a sink in this process, then `size` bytes down one, on quinn's
/// defaults and with nothing else. Returns the two durations.
///
/// `source` makes the bytes sent up (so the baseline pays for making them as
/// the natter upload does).
///
/// # Errors
/// Socket, TLS or stream failures.
pub async fn raw_transfer<R: tokio::io::AsyncRead + Unpin>(
    size: u64,
    source: &mut R,
) -> anyhow::Result<(Duration, Duration)> {
    let (server, cert) = server_endpoint("127.0.0.1:0".parse()?, BULK_ALPN)?;
    let addr = server.local_addr()?;
    let sink = server.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = sink.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        match recv.read_u8().await {
                            Ok(BULK_UP) => {
                                let mut n = 0u64;
                                while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                                    n += chunk.bytes.len() as u64;
                                }
                                let _ = send.write_u64(n).await;
                            }
                            Ok(BULK_DOWN) => {
                                let Ok(mut left) = recv.read_u64().await else { return };
                                let block = bytes::Bytes::from(vec![0x5a; CHUNK]);
                                while left > 0 {
                                    let n = left.min(CHUNK as u64) as usize;
                                    if send.write_chunk(block.slice(..n)).await.is_err() {
                                        return;
                                    }
                                    left -= n as u64;
                                }
                            }
                            _ => return,
                        }
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    let client = client_endpoint(cert, BULK_ALPN)?;
    let conn = client.connect(addr, "localhost")?.await.context("connecting to the bulk sink")?;

    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_u8(BULK_UP).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        source.read_exact(&mut buf[..want]).await?;
        send.write_all(&buf[..want]).await?;
        left -= want as u64;
    }
    send.finish()?;
    let got = recv.read_u64().await?;
    let up = started.elapsed();
    anyhow::ensure!(got == size, "the sink counted {got} of {size} bytes");

    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_u8(BULK_DOWN).await?;
    send.write_u64(size).await?;
    send.finish()?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        got += chunk.bytes.len() as u64;
    }
    let down = started.elapsed();
    anyhow::ensure!(got == size, "received {got} of {size} bytes");
    conn.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    task.abort();
    Ok((up, down))
}
