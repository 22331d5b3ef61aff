//! A person's data as files: what `natter account export` (through the
//! person's own session) and `natter-admin users export` (on the store)
//! write, in one layout:
//!
//! - `profile.json`: the account (ids, email, name, phone, when made), the
//!   identities linked to it and its sessions;
//! - `conversations.json`: every conversation they are or were in, with its
//!   members as they see them;
//! - `messages.jsonl`: every message they sent, one JSON object a line, in
//!   conversation then seq order (text, or the file with its `file` path, or
//!   `encrypted` for end-to-end encrypted content, which only their devices
//!   can read);
//! - `media/<media_id>/<file name>`: the files those messages carry.

use std::path::{Path, PathBuf};

use anyhow::Context;
use natter_proto::wire;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The account as exported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Profile {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub phone: String,
    pub created_at_ms: u64,
    /// `google`, `github`.
    pub identities: Vec<String>,
    pub sessions: Vec<Session>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub device_name: String,
    pub method: String,
    pub created_at_ms: u64,
    pub last_used_at_ms: u64,
    pub last_address: String,
}

impl From<&wire::SessionInfo> for Session {
    fn from(s: &wire::SessionInfo) -> Self {
        Self {
            device_name: s.device_name.clone(),
            method: s.method.clone(),
            created_at_ms: s.created_at_ms,
            last_used_at_ms: s.last_used_at_ms,
            last_address: s.last_address.clone(),
        }
    }
}

/// Where an export reads from: a session of the person, or the store.
#[allow(async_fn_in_trait)]
pub trait Source {
    async fn profile(&mut self) -> anyhow::Result<Profile>;
    /// Every conversation they are or were in.
    async fn conversations(&mut self) -> anyhow::Result<Vec<wire::Conversation>>;
    /// Messages of `conversation` with seq > `after` they may read, ascending,
    /// and whether more follow.
    async fn history(&mut self, conversation: &str, after: u64) -> anyhow::Result<(Vec<wire::Message>, bool)>;
    /// Writes the bytes of `media_id` to `out`.
    async fn media(&mut self, media_id: &str, out: &mut tokio::fs::File) -> anyhow::Result<()>;
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub conversations: usize,
    pub messages: u64,
    pub files: u64,
    pub file_bytes: u64,
}

/// A file name as the uploader gave it, made safe to write: no directories,
/// nothing hidden, not empty.
fn safe_file_name(name: &str) -> String {
    let cleaned: String = name.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    let cleaned = cleaned.trim_start_matches('.').trim();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned.chars().take(200).collect()
    }
}

fn member_json(m: &wire::Member) -> serde_json::Value {
    json!({"user_id": m.user_id, "email": m.email, "display_name": m.display_name})
}

/// Exports the data of the person `source` is about into `out` (new or empty).
///
/// # Errors
/// `out` is not empty, or reading or writing failed.
pub async fn export(source: &mut impl Source, out: &Path) -> anyhow::Result<Report> {
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!("{} is not empty: export into a new directory", out.display());
    }
    create_private_dir(out)?;
    let profile = source.profile().await?;
    write_json(&out.join("profile.json"), &serde_json::to_value(&profile)?).await?;

    let conversations = source.conversations().await?;
    let listed: Vec<_> = conversations
        .iter()
        .map(|c| {
            let kind = if c.kind == wire::ConversationKind::Group as i32 { "group" } else { "direct" };
            json!({
                "conversation_id": c.conversation_id, "kind": kind, "name": c.name, "e2ee": c.e2ee,
                "created_at_ms": c.created_at_ms, "active": c.active,
                "members": c.members.iter().map(member_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    write_json(&out.join("conversations.json"), &serde_json::Value::Array(listed)).await?;

    let mut lines = tokio::fs::File::create(out.join("messages.jsonl")).await?;
    let mut report = Report { conversations: conversations.len(), messages: 0, files: 0, file_bytes: 0 };
    for c in &conversations {
        let mut after = 0;
        loop {
            let (page, more) = source.history(&c.conversation_id, after).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for m in page.iter().filter(|m| m.sender_user_id == profile.user_id) {
                let line = message_json(source, m, out, &mut report).await?;
                lines.write_all(format!("{line}\n").as_bytes()).await?;
                report.messages += 1;
            }
            if !more {
                break;
            }
        }
    }
    lines.sync_all().await?;
    Ok(report)
}

async fn message_json(
    source: &mut impl Source,
    m: &wire::Message,
    out: &Path,
    report: &mut Report,
) -> anyhow::Result<serde_json::Value> {
    let mut v = json!({
        "conversation_id": m.conversation_id, "seq": m.seq, "sent_at_ms": m.sent_at_ms,
        "client_msg_id": m.client_msg_id, "device_id": m.sender_device_id,
    });
    match m.content.as_ref().and_then(|c| c.body.as_ref()) {
        Some(wire::content::Body::Text(t)) => v["text"] = json!(t.body),
        Some(wire::content::Body::Erased(_)) => v["erased"] = json!(true),
        Some(wire::content::Body::Media(media)) => {
            let dir = out.join("media").join(safe_file_name(&media.media_id));
            create_private_dir(&dir)?;
            let path: PathBuf = dir.join(safe_file_name(&media.file_name));
            let mut file =
                tokio::fs::File::create(&path).await.with_context(|| format!("writing {}", path.display()))?;
            source.media(&media.media_id, &mut file).await.with_context(|| format!("fetching {}", media.media_id))?;
            file.sync_all().await?;
            report.files += 1;
            report.file_bytes += media.size;
            let rel = path.strip_prefix(out).unwrap_or(&path).to_string_lossy().into_owned();
            v["media"] = json!({
                "media_id": media.media_id, "file_name": media.file_name, "mime_type": media.mime_type,
                "size": media.size, "sha256": hex::encode(&media.sha256), "caption": media.caption, "file": rel,
            });
        }
        Some(wire::content::Body::Mls(_) | wire::content::Body::MlsCommit(_)) => v["encrypted"] = json!(true),
        None => {}
    }
    Ok(v)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

async fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let mut f = tokio::fs::File::create(path).await.with_context(|| format!("writing {}", path.display()))?;
    f.write_all(&serde_json::to_vec_pretty(value)?).await?;
    f.write_all(b"\n").await?;
    f.sync_all().await?;
    Ok(())
}

/// An export through the person's own session.
pub struct ClientSource<'a> {
    pub client: &'a crate::Client,
}

impl Source for ClientSource<'_> {
    async fn profile(&mut self) -> anyhow::Result<Profile> {
        let me = self.client.identity().context("not signed in")?;
        let identities = self.client.identities().await?;
        let sessions = self.client.sessions().await?;
        Ok(Profile {
            user_id: me.user_id,
            email: me.email,
            display_name: me.display_name,
            phone: String::new(),
            created_at_ms: 0,
            identities: identities.iter().map(|i| crate::oauth::provider_name(i.provider()).to_lowercase()).collect(),
            sessions: sessions.iter().map(Session::from).collect(),
        })
    }

    async fn conversations(&mut self) -> anyhow::Result<Vec<wire::Conversation>> {
        let mut all = Vec::new();
        let mut before = 0;
        loop {
            let page = self.client.conversation_page(200, before).await?;
            let Some(last) = page.conversations.last() else { break };
            before = last.activity;
            all.extend(page.conversations);
            if !page.has_more {
                break;
            }
        }
        Ok(all)
    }

    async fn history(&mut self, conversation: &str, after: u64) -> anyhow::Result<(Vec<wire::Message>, bool)> {
        let page = self
            .client
            .history(wire::GetHistory {
                conversation_id: conversation.into(),
                before_seq: 0,
                // Seq 1 starts every conversation and is never a message:
                // "after 1" is all of them (0 would mean the newest page).
                after_seq: after.max(1),
                limit: 500,
            })
            .await?;
        Ok((page.messages, page.has_more))
    }

    async fn media(&mut self, media_id: &str, out: &mut tokio::fs::File) -> anyhow::Result<()> {
        self.client.download(media_id, 0, 0, out, |_| {}).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape_the_export() {
        assert_eq!(safe_file_name("holiday.jpg"), "holiday.jpg");
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_name(".hidden"), "hidden");
        assert_eq!(safe_file_name(""), "file");
        assert_eq!(safe_file_name("a\nb"), "a_b");
    }
}
