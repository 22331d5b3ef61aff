//! Uploads and downloads, each on a bidirectional stream of its own
//! (spec/protocol.md section 4.4), so a large file never holds up chat on the
//! control stream: one length-prefixed `TransferRequest`, then raw bytes (an
//! upload); `TransferReply` frames back, then raw bytes (a download).

use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::wire::{self, transfer_reply, transfer_request};
use natter_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::{Client, ClientError};

/// Bytes written per chunk (the progress callback runs once per chunk).
const CHUNK: usize = 64 * 1024;
/// The largest reply frame a server sends on a transfer stream.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// What is being uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSpec {
    pub conversation_id: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Set to resume an upload natterd already accepted (`UploadError::upload_id`).
    pub upload_id: Option<String>,
}

/// An upload that did not finish; with an `upload_id`, it can be resumed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct UploadError {
    /// natterd's id for the upload, once it accepted it: resume with it.
    pub upload_id: Option<String>,
    pub error: ClientError,
}

/// The SHA-256 and size of everything `source` yields (then it is at its end).
///
/// # Errors
/// Reading fails.
pub async fn digest<R: AsyncRead + Unpin>(source: &mut R) -> std::io::Result<([u8; 32], u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = source.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((out, size))
}

fn server_error(e: wire::Error) -> ClientError {
    ClientError::Server { code: ErrorCode(e.code), message: e.message, retry_after_ms: e.retry_after_ms }
}

fn lost(e: impl std::fmt::Display) -> ClientError {
    ClientError::Closed { code: None, reason: format!("transfer stream: {e}") }
}

/// Reads the next reply frame; any bytes after it stay in `decoder`.
async fn read_reply(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<transfer_reply::Kind, ClientError> {
    loop {
        match decoder.next_message::<wire::TransferReply>() {
            Ok(Some(wire::TransferReply { kind: Some(kind) })) => return Ok(kind),
            Ok(Some(wire::TransferReply { kind: None })) => {
                return Err(ClientError::Protocol("a transfer reply of no known kind".into()))
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) => return Err(lost("ended before natterd answered")),
            Err(e) => return Err(lost(e)),
        }
    }
}

impl Client {
    async fn open_transfer(
        &self,
        kind: transfer_request::Kind,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(lost)?;
        // Below the control stream's 0: chat goes first while an upload's
        // bytes are queued on this connection.
        let _ = send.set_priority(-1);
        let frame = encode_frame(&wire::TransferRequest { kind: Some(kind) }, self.max_frame_bytes)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        send.write_all(&frame).await.map_err(lost)?;
        Ok((send, recv))
    }

    /// Uploads `source` (of `spec.size` bytes with `spec.sha256`) for a
    /// conversation; returns the media to send ([`Client::send_media`]).
    /// `progress` is told how many bytes natterd has after each chunk.
    ///
    /// # Errors
    /// natterd's refusal (`MEDIA_TOO_LARGE`, `QUOTA_EXCEEDED`,
    /// `MEDIA_TYPE_REFUSED`, `MEDIA_MISMATCH`, `NOT_A_MEMBER`, …), or a lost
    /// connection: then [`UploadError::upload_id`] resumes it.
    pub async fn upload<R: AsyncRead + AsyncSeek + Unpin>(
        &self,
        spec: &UploadSpec,
        source: &mut R,
        mut progress: impl FnMut(u64),
    ) -> Result<wire::Media, UploadError> {
        let start = wire::UploadStart {
            conversation_id: spec.conversation_id.clone(),
            size: spec.size,
            sha256: spec.sha256.to_vec(),
            file_name: spec.file_name.clone(),
            upload_id: spec.upload_id.clone().unwrap_or_default(),
        };
        let fail = |upload_id: Option<String>| move |error| UploadError { upload_id, error };
        let (mut send, mut recv) =
            self.open_transfer(transfer_request::Kind::Upload(start)).await.map_err(fail(spec.upload_id.clone()))?;
        let mut decoder = FrameDecoder::new(MAX_REPLY_BYTES);
        let ready = match read_reply(&mut recv, &mut decoder).await.map_err(fail(spec.upload_id.clone()))? {
            transfer_reply::Kind::Ready(r) => r,
            transfer_reply::Kind::Error(e) => return Err(fail(spec.upload_id.clone())(server_error(e))),
            other => return Err(fail(None)(ClientError::Protocol(format!("expected UploadReady, got {other:?}")))),
        };
        let upload_id = Some(ready.upload_id.clone());
        let fail_here = |error| UploadError { upload_id: upload_id.clone(), error };
        source.seek(std::io::SeekFrom::Start(ready.offset)).await.map_err(|e| fail_here(lost(e)))?;
        let mut sent = ready.offset;
        progress(sent);
        let mut buf = vec![0u8; CHUNK];
        while sent < spec.size {
            let want = CHUNK.min((spec.size - sent) as usize);
            let n = source.read(&mut buf[..want]).await.map_err(|e| fail_here(lost(e)))?;
            if n == 0 {
                return Err(fail_here(ClientError::Protocol("the file is shorter than its declared size".into())));
            }
            if let Err(e) = send.write_all(&buf[..n]).await {
                // natterd may have refused early (over quota, a refused type):
                // its reply says why.
                return Err(fail_here(match read_reply(&mut recv, &mut decoder).await {
                    Ok(transfer_reply::Kind::Error(e)) => server_error(e),
                    _ => lost(e),
                }));
            }
            sent += n as u64;
            progress(sent);
        }
        let _ = send.finish();
        match read_reply(&mut recv, &mut decoder).await.map_err(fail_here)? {
            transfer_reply::Kind::Done(media) => Ok(media),
            transfer_reply::Kind::Error(e) => Err(fail_here(server_error(e))),
            other => Err(fail_here(ClientError::Protocol(format!("expected the stored media, got {other:?}")))),
        }
    }

    /// Downloads `length` bytes (0: to the end) of a media from `offset` into
    /// `sink`; returns natterd's header (the media, the range). `progress` is
    /// told the bytes written so far.
    ///
    /// # Errors
    /// `NOT_FOUND` (no such media, or not yours to read), `INVALID_ARGUMENT`
    /// (a range past the end), a lost connection.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        media_id: &str,
        offset: u64,
        length: u64,
        sink: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<wire::DownloadHeader, ClientError> {
        let start = wire::DownloadStart { media_id: media_id.into(), offset, length };
        let (mut send, mut recv) = self.open_transfer(transfer_request::Kind::Download(start)).await?;
        let _ = send.finish();
        let mut decoder = FrameDecoder::new(MAX_REPLY_BYTES);
        let header = match read_reply(&mut recv, &mut decoder).await? {
            transfer_reply::Kind::Header(h) => h,
            transfer_reply::Kind::Error(e) => return Err(server_error(e)),
            other => return Err(ClientError::Protocol(format!("expected a download header, got {other:?}"))),
        };
        // Bytes that came with the header are the start of the data.
        let early = decoder.buffer_mut().split();
        let mut got = early.len() as u64;
        sink.write_all(&early).await.map_err(lost)?;
        progress(got);
        while got < header.length {
            match recv.read_chunk(CHUNK, true).await {
                Ok(Some(chunk)) => {
                    got += chunk.bytes.len() as u64;
                    sink.write_all(&chunk.bytes).await.map_err(lost)?;
                    progress(got);
                }
                Ok(None) => break,
                Err(e) => return Err(lost(e)),
            }
        }
        sink.flush().await.map_err(lost)?;
        if got != header.length {
            return Err(lost(format!("{got} bytes of {} arrived", header.length)));
        }
        Ok(header)
    }

    /// Sends an uploaded media into its conversation, with a caption.
    ///
    /// # Errors
    /// As [`Client::send_text`]; `NOT_FOUND` for a media that is not your
    /// upload; `INVALID_ARGUMENT` for one uploaded for another conversation.
    pub async fn send_media(
        &self,
        conversation_id: &str,
        client_msg_id: &str,
        media_id: &str,
        caption: &str,
    ) -> Result<wire::Sent, ClientError> {
        let media = wire::Media { media_id: media_id.into(), caption: caption.into(), ..wire::Media::default() };
        let body = wire::request::Body::SendMessage(wire::SendMessage {
            conversation_id: conversation_id.into(),
            client_msg_id: client_msg_id.into(),
            content: Some(wire::Content { body: Some(wire::content::Body::Media(media)) }),
        });
        match self.request(body).await? {
            wire::response::Result::Sent(s) => Ok(s),
            other => Err(super::unexpected(&other)),
        }
    }

    /// A short-lived URL that fetches the media straight from the S3 store.
    ///
    /// # Errors
    /// `NOT_FOUND`, `DIRECT_URL_UNSUPPORTED` (the server keeps files itself).
    pub async fn media_url(&self, media_id: &str) -> Result<wire::MediaUrl, ClientError> {
        let body = wire::request::Body::GetMediaUrl(wire::GetMediaUrl { media_id: media_id.into() });
        match self.request(body).await? {
            wire::response::Result::MediaUrl(u) => Ok(u),
            other => Err(super::unexpected(&other)),
        }
    }
}
