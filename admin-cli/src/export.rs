//! `natter-admin users export EMAIL --out DIR`: a person's data read from the
//! store (beside a running natterd: read-only on the embedded store), in the
//! layout of `natter account export` (`natter_client::export`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use natter_client::export::{Profile, Session, Source};
use natter_proto::wire;
use natter_server::blob::{BlobId, BlobStore};
use natter_server::domain::{ConversationId, Email, MediaId, Seq};
use natter_server::session::{convert, UserInfo};
use natter_server::store::{HistoryPage, Store, UserRecord};
use tokio::io::AsyncReadExt;

struct StoreSource {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    user: UserRecord,
    /// Where they left each conversation they left: how far they may read it.
    left: std::collections::HashMap<String, Seq>,
}

impl StoreSource {
    async fn info(&self, user: natter_server::domain::UserId) -> anyhow::Result<UserInfo> {
        let u = self.store.user_by_id(user).await?.with_context(|| format!("user {user} is not in the read model"))?;
        Ok(UserInfo { email: u.email, display_name: u.display_name })
    }
}

impl Source for StoreSource {
    async fn profile(&mut self) -> anyhow::Result<Profile> {
        let u = &self.user;
        let identities = self.store.identities_of(u.user_id).await?;
        let sessions = self.store.sessions_of(u.user_id).await?;
        Ok(Profile {
            user_id: u.user_id.to_string(),
            email: u.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default(),
            display_name: u.display_name.clone(),
            phone: u.phone.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default(),
            created_at_ms: u.created_at.0,
            identities: identities.iter().map(|i| i.provider.as_str().to_owned()).collect(),
            sessions: sessions
                .iter()
                .map(|s| Session {
                    device_name: s.device_name.clone(),
                    method: s.method.as_str().to_owned(),
                    created_at_ms: s.created_at.0,
                    last_used_at_ms: 0,
                    last_address: String::new(),
                })
                .collect(),
        })
    }

    async fn conversations(&mut self) -> anyhow::Result<Vec<wire::Conversation>> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = self.store.conversations_for_user(self.user.user_id, before, 200).await?;
            let Some(last) = page.last() else { break };
            before = Some(last.activity);
            let full = page.len() == 200;
            for summary in page {
                let mut members = Vec::new();
                for m in &summary.state.members {
                    let role = (summary.state.kind == natter_server::domain::conversation::ConversationKind::Group)
                        .then_some(m.role);
                    members.push(convert::member(m.user, role, &self.info(m.user).await?));
                }
                let mut c = convert::conversation(&summary.state, members, None);
                c.active = summary.left_at.is_none();
                if let Some(left) = summary.left_at {
                    self.left.insert(c.conversation_id.clone(), left);
                }
                all.push(c);
            }
            if !full {
                break;
            }
        }
        Ok(all)
    }

    async fn history(&mut self, conversation: &str, after: u64) -> anyhow::Result<(Vec<wire::Message>, bool)> {
        let id = ConversationId::parse(conversation).map_err(|e| anyhow::anyhow!("{e}"))?;
        let upto = self.left.get(conversation).copied();
        let (records, more) = self.store.messages(id, HistoryPage::After { seq: Seq(after), limit: 500 }, upto).await?;
        let mut page = Vec::with_capacity(records.len());
        for r in &records {
            page.push(convert::message_record(r, &self.info(r.sender_user_id).await?));
        }
        Ok((page, more))
    }

    async fn media(&mut self, media_id: &str, out: &mut tokio::fs::File) -> anyhow::Result<()> {
        let id = MediaId(uuid::Uuid::try_parse(media_id).context("a media id")?);
        let media = self.store.media(id).await?.context("the media is not in the read model")?;
        let mut read = self.blobs.get(BlobId(media.sha256), None).await.context("reading its bytes")?;
        let mut buf = vec![0; 256 * 1024];
        loop {
            let n = read.body.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            tokio::io::AsyncWriteExt::write_all(out, &buf[..n]).await?;
        }
    }
}

/// Exports `email`'s data from the deployment `config` describes into `out`.
///
/// # Errors
/// No such account, `out` not empty, or the store, blob store or disk failed.
pub async fn export(
    config: &natter_server::config::Config,
    email: &str,
    out: &Path,
) -> anyhow::Result<natter_client::export::Report> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("{email:?}: {e}"))?;
    let store = crate::open_configured(config, true).await?;
    let result = async {
        let user = store.user_by_email(&email).await?.with_context(|| format!("no account has the email {email}"))?;
        let blobs = natter_server::blob::open(&config.blob, &config.data_dir).context("opening the blob store")?;
        let mut source = StoreSource { store: store.clone(), blobs, user, left: Default::default() };
        natter_client::export::export(&mut source, out).await
    }
    .await;
    store.shutdown().await;
    result
}
