//! Transfer streams (spec/protocol.md section 4.4): one per upload or
//! download, opened by the client beside the control stream. This module
//! frames them; `session::media` decides.

use std::sync::Arc;
use std::time::Duration;

use natter_proto::codec::encode_frame;
use natter_proto::wire::{self, transfer_reply, transfer_request};
use natter_proto::{ErrorCode, FrameDecoder};
use quinn::VarInt;

use crate::metrics::Metrics;
use crate::session::{Identity, Service, WireError};

/// The request frame must arrive this soon after the stream opens.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request frame.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Bytes read from the blob store at a time for a download.
const DOWNLOAD_CHUNK: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// Send priority of a download's stream, below the control stream's 0.
const TRANSFER_PRIORITY: i32 = -1;

async fn reply(send: &mut quinn::SendStream, kind: transfer_reply::Kind) -> bool {
    match encode_frame(&wire::TransferReply { kind: Some(kind) }, MAX_REQUEST_BYTES * 4) {
        Ok(frame) => send.write_all(&frame).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a transfer reply does not fit a frame");
            false
        }
    }
}

/// [`refuse`], as a transfer's result.
async fn refused(send: quinn::SendStream, recv: quinn::RecvStream, e: WireError) -> Result<u64, ErrorCode> {
    let code = e.code;
    refuse(send, recv, e).await;
    Err(code)
}

/// Answers with an error, finishes the stream and stops reading it.
pub(super) async fn refuse(mut send: quinn::SendStream, mut recv: quinn::RecvStream, e: WireError) {
    if reply(&mut send, transfer_reply::Kind::Error(e.to_wire())).await {
        let _ = send.finish();
    }
    let _ = recv.stop(VarInt::from_u32(e.code.0));
    // Let the reply reach the peer before the stream's state goes.
    let _ = send.stopped().await;
}

/// Counts the bytes read through it.
struct Counting<'a> {
    inner: &'a mut quinn::RecvStream,
    bytes: u64,
}

impl tokio::io::AsyncRead for Counting<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.bytes += (buf.filled().len() - before) as u64;
        poll
    }
}

fn result_name(result: &Result<u64, ErrorCode>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(code) => code.name().unwrap_or("unknown"),
    }
}

/// Runs one transfer stream to its end, counted in the metrics.
pub(super) async fn serve(
    service: Arc<Service>,
    identity: Option<Identity>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    metrics: Arc<Metrics>,
) {
    metrics.transfer_started();
    let (direction, result) = run(service, identity, send, recv).await;
    let bytes = *result.as_ref().unwrap_or(&0);
    metrics.transfer_ended(direction, result_name(&result), bytes);
}

/// The transfer; which way it went and the bytes it moved, or the error code.
async fn run(
    service: Arc<Service>,
    identity: Option<Identity>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> (&'static str, Result<u64, ErrorCode>) {
    let mut decoder = FrameDecoder::new(MAX_REQUEST_BYTES);
    let request = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            match decoder.next_message::<wire::TransferRequest>() {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(WireError::new(ErrorCode::PROTOCOL_VIOLATION, format!("transfer request: {e}"))),
            }
            match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
                Ok(None) | Err(_) => {
                    return Err(WireError::new(ErrorCode::PROTOCOL_VIOLATION, "the stream ended before its request"))
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(WireError::new(ErrorCode::PROTOCOL_VIOLATION, "no transfer request in time")));
    let request = match request {
        Ok(wire::TransferRequest { kind: Some(kind) }) => kind,
        Ok(wire::TransferRequest { kind: None }) => {
            let e = WireError::new(ErrorCode::PROTOCOL_VIOLATION, "a transfer request of no known kind");
            return ("unknown", refused(send, recv, e).await);
        }
        Err(e) => return ("unknown", refused(send, recv, e).await),
    };
    let Some(me) = identity else {
        let direction = match request {
            transfer_request::Kind::Upload(_) => "upload",
            transfer_request::Kind::Download(_) => "download",
        };
        return (direction, refused(send, recv, WireError::new(ErrorCode::UNAUTHENTICATED, "sign in first")).await);
    };
    match request {
        transfer_request::Kind::Upload(start) => {
            let plan = match service.upload_ready(&me, &start).await {
                Ok(plan) => plan,
                Err(e) => return ("upload", refused(send, recv, e).await),
            };
            if !reply(&mut send, transfer_reply::Kind::Ready(plan.ready())).await {
                return ("upload", Err(ErrorCode::UNAVAILABLE));
            }
            let early = decoder.buffer_mut().split();
            let mut counted = Counting { inner: &mut recv, bytes: early.len() as u64 };
            let received = service.upload_receive(&me, plan, &early, &mut counted).await;
            let bytes = counted.bytes;
            match received {
                Ok(media) => {
                    if reply(&mut send, transfer_reply::Kind::Done(media)).await {
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                    ("upload", Ok(bytes))
                }
                Err(e) => ("upload", refused(send, recv, e).await),
            }
        }
        transfer_request::Kind::Download(start) => {
            let (header, read) = match service.download_open(&me, &start).await {
                Ok(opened) => opened,
                Err(e) => return ("download", refused(send, recv, e).await),
            };
            let _ = recv.stop(VarInt::from_u32(0));
            // The control stream (priority 0) goes first when both have
            // data queued on this connection: a download never delays chat.
            let _ = send.set_priority(TRANSFER_PRIORITY);
            if !reply(&mut send, transfer_reply::Kind::Header(header)).await {
                return ("download", Err(ErrorCode::UNAVAILABLE));
            }
            // Large reads: a file read is a trip to the blocking pool, and
            // quinn takes a large write as cheaply as a small one.
            let mut body = tokio::io::BufReader::with_capacity(DOWNLOAD_CHUNK, read.body);
            match tokio::io::copy_buf(&mut body, &mut send).await {
                Ok(n) if n == read.len => {
                    let _ = send.finish();
                    let _ = send.stopped().await;
                    ("download", Ok(n))
                }
                Ok(n) => {
                    tracing::error!(sent = n, expected = read.len, "a blob read ended early");
                    let _ = send.reset(VarInt::from_u32(ErrorCode::INTERNAL.0));
                    ("download", Err(ErrorCode::INTERNAL))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a download ended early");
                    let _ = send.reset(VarInt::from_u32(ErrorCode::UNAVAILABLE.0));
                    ("download", Err(ErrorCode::UNAVAILABLE))
                }
            }
        }
    }
}
