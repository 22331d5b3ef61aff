//! Conversations and messages: opening direct conversations, sending, history,
//! the conversation list, read watermarks and receipts.

use natter_proto::limits::{DEFAULT_HISTORY_LIMIT, MAX_CONVERSATION_LIST_LIMIT, MAX_HISTORY_LIMIT};
use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;
use prost::Message as _;

use super::{convert, invalid, Identity, Service, WireError};
use crate::domain::{
    conversation::{self, ConversationKind, SendCommand},
    ClientMsgId, Content, ConversationId, Email, Event, Millis, Rejection, Seq,
};
use crate::store::{
    AppendError, AppendOutcome, ExpectedVersion, HistoryPage, NewEvent, Precondition, StreamAppend, StreamName,
};

/// Conversations listed when the request asks for 0.
const DEFAULT_CONVERSATION_LIST_LIMIT: u32 = 100;

impl Service {
    pub(super) async fn open_direct(&self, me: &Identity, req: wire::OpenDirect) -> Result<Reply, WireError> {
        let peer_email = Email::parse(&req.peer_email)?;
        let peer = self
            .store
            .user_by_email(&peer_email)
            .await?
            .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, format!("no user with email {peer_email}")))?;
        if peer.user_id == me.user_id {
            return Err(Rejection::DirectWithSelf.into());
        }
        let id = if req.e2ee {
            ConversationId::direct_e2ee(me.user_id, peer.user_id)
        } else {
            ConversationId::direct(me.user_id, peer.user_id)
        };
        let existing = self.conversation(id).await?;
        let now = self.now();
        if let Some(event) = conversation::decide_open_direct(existing.as_deref(), me.user_id, peer.user_id, now)? {
            let mut events = vec![NewEvent::fresh(match event {
                Event::DirectConversationStarted { members, at, .. } => {
                    Event::DirectConversationStarted { conversation_id: id, members, at }
                }
                other => other,
            })];
            if req.e2ee {
                events.push(NewEvent::fresh(Event::ConversationEncrypted { conversation_id: id, at: now }));
            }
            let append = StreamAppend::new(StreamName::conversation(id), ExpectedVersion::NoStream, events);
            match self.store.append(vec![append]).await {
                // Lost a race with the peer opening it at the same moment: fine.
                Ok(_) | Err(AppendError::WrongExpectedVersion { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.conversation_for(me, id).await.map(Reply::Conversation)
    }

    /// The conversation as the caller sees it in their list.
    pub(super) async fn conversation_for(
        &self,
        me: &Identity,
        id: ConversationId,
    ) -> Result<wire::Conversation, WireError> {
        let summary = self
            .store
            .conversation_summary(me.user_id, id)
            .await?
            .ok_or_else(|| WireError::new(ErrorCode::INTERNAL, "conversation vanished from the caller's list"))?;
        self.conversation_to_wire(&summary.state, Some(&summary)).await
    }

    pub(super) async fn get_conversation(&self, me: &Identity, req: wire::GetConversation) -> Result<Reply, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        self.conversation_for(me, state.id).await.map(Reply::Group)
    }

    pub(super) async fn send_message(&self, me: &Identity, req: wire::SendMessage) -> Result<Reply, WireError> {
        let client_msg_id = ClientMsgId::parse(&req.client_msg_id)?;
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        let mls_invalid = |why: String| WireError::new(ErrorCode::MLS_MESSAGE_INVALID, why);
        let mls_only_in_e2ee = || {
            if state.e2ee {
                Ok(())
            } else {
                Err(WireError::from(Rejection::EncryptionMismatch { e2ee: false }))
            }
        };
        let content = match req.content.and_then(|c| c.body) {
            Some(wire::content::Body::Text(t)) => Content::Text(t.body),
            Some(wire::content::Body::Media(m)) => self.media_to_send(me, state.id, m).await?,
            Some(wire::content::Body::Mls(m)) => {
                mls_only_in_e2ee()?;
                crate::mls::check_application(&m.message, state.id).map_err(mls_invalid)?;
                let media = if m.media_id.is_empty() {
                    None
                } else {
                    Some(self.encrypted_upload(me, state.id, &m.media_id).await?)
                };
                Content::Mls { message: m.message, media }
            }
            Some(wire::content::Body::MlsCommit(c)) => {
                mls_only_in_e2ee()?;
                let framed =
                    crate::mls::check_commit(&c.commit, &c.welcome, &c.group_info, state.id).map_err(mls_invalid)?;
                let epoch = framed.epoch;
                self.check_commit_leaves(me, &state, framed, &c.group_info).await?;
                Content::MlsCommit { commit: c.commit, welcome: c.welcome, group_info: c.group_info, epoch }
            }
            // What the server shows of a deleted account's message; no one sends it.
            Some(wire::content::Body::Erased(_)) => {
                return Err(invalid("content", "erased content is the server's, not a message to send"))
            }
            None => return Err(Rejection::EmptyMessage.into()),
        };
        let commit_epoch = match &content {
            Content::MlsCommit { epoch, group_info, .. } => Some((*epoch, group_info.clone())),
            _ => None,
        };
        let event_id = client_msg_id.event_id(state.id, me.user_id);
        let conv_stream = StreamName::conversation(state.id);
        // An application message in an encrypted group goes in only while no
        // former member's device is a leaf (`check_no_removal_pending`), and
        // the group must not change between that check and the append.
        let guarded = matches!(content, Content::Mls { .. }) && state.kind == ConversationKind::Group;
        let outcome = if guarded {
            let mut state = state;
            let mut attempt = 0;
            loop {
                attempt += 1;
                self.check_no_removal_pending(&state).await?;
                let cmd = SendCommand {
                    sender: me.user_id,
                    device: me.device_id,
                    client_msg_id: client_msg_id.clone(),
                    content: content.clone(),
                };
                let event = conversation::decide_send(&state, cmd, self.now())?;
                let since = Precondition::GroupUnchanged { conversation: state.id, since: state.changed };
                match self.append_send(state.id, (event_id, event), since, None).await {
                    Err(AppendError::PreconditionFailed(Precondition::GroupUnchanged { .. })) if attempt < 5 => {
                        state = self.member_conversation(me.user_id, &req.conversation_id).await?;
                    }
                    Err(AppendError::PreconditionFailed(Precondition::GroupUnchanged { .. })) => {
                        return Err(WireError::new(ErrorCode::CONFLICT, "the group kept changing: send again"));
                    }
                    other => break other?,
                }
            }
        } else {
            let cmd = SendCommand { sender: me.user_id, device: me.device_id, client_msg_id, content };
            let now = self.now();
            let event = conversation::decide_send(&state, cmd, now)?;
            // Membership is checked again atomically with the append: a
            // removal that commits first wins.
            let member = Precondition::ActiveMember { conversation: state.id, user: me.user_id };
            let closing = commit_epoch.clone().map(|(epoch, info)| (epoch, info, now));
            match self.append_send(state.id, (event_id, event), member, closing).await {
                Ok(o) => o,
                Err(AppendError::WrongExpectedVersion { actual, .. }) if commit_epoch.is_some() => {
                    return Err(super::mls::stale_epoch(commit_epoch.map_or(0, |c| c.0), actual));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (recorded, duplicate) = match outcome {
            AppendOutcome::Appended(v) => (v, false),
            AppendOutcome::AlreadyStored(v) => (v, true),
        };
        let rec = recorded
            .into_iter()
            .find(|r| r.stream == conv_stream)
            .ok_or_else(|| WireError::new(ErrorCode::INTERNAL, "the message's event is missing from the append"))?;
        let sent_at = match &rec.event {
            Event::MessageSent(m) => m.at.0,
            _ => rec.recorded_at.0,
        };
        Ok(Reply::Sent(wire::Sent { seq: rec.version, sent_at_ms: sent_at, duplicate }))
    }

    /// Appends a message's event under `precondition`; a commit
    /// (`commit_epoch`) closes its epoch in the same append.
    async fn append_send(
        &self,
        conversation: ConversationId,
        event: (uuid::Uuid, Event),
        precondition: Precondition,
        commit_epoch: Option<(u64, Vec<u8>, Millis)>,
    ) -> Result<AppendOutcome, AppendError> {
        let (event_id, event) = event;
        let mut appends = vec![StreamAppend::new(
            StreamName::conversation(conversation),
            ExpectedVersion::Any,
            vec![NewEvent { id: event_id, event }],
        )
        .with_precondition(precondition)];
        if let Some((epoch, group_info, at)) = commit_epoch {
            // One commit per epoch: the `mls:` stream's version is the epoch,
            // and this append closes it or fails with the commit.
            appends.push(StreamAppend::new(
                StreamName::mls(conversation),
                ExpectedVersion::Exact(epoch),
                vec![NewEvent {
                    id: uuid::Uuid::new_v5(&event_id, b"mls-epoch"),
                    event: Event::MlsEpochClosed { conversation_id: conversation, epoch, group_info, at },
                }],
            ));
        }
        self.store.append(appends).await
    }

    /// The encrypted file an MLS message carries: the sender's upload for
    /// this conversation (opaque bytes; natterd knows nothing else of it).
    async fn encrypted_upload(
        &self,
        me: &Identity,
        conversation: ConversationId,
        raw: &str,
    ) -> Result<crate::domain::MediaId, WireError> {
        Ok(self.sendable_upload(me, conversation, raw).await?.media_id)
    }

    /// An upload a message may send: the sender's own, for this
    /// conversation, not a preview, and not about to be discarded unsent.
    async fn sendable_upload(
        &self,
        me: &Identity,
        conversation: ConversationId,
        raw: &str,
    ) -> Result<crate::store::MediaRecord, WireError> {
        let id = crate::domain::MediaId::parse(raw)?;
        // Someone else's upload is as unknown as one that does not exist.
        let record = self
            .store
            .media(id)
            .await?
            .filter(|r| r.uploader == me.user_id)
            .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "no such upload of yours"))?;
        if record.conversation_id != conversation {
            return Err(invalid("media_id", "uploaded for another conversation: upload it there"));
        }
        if record.preview_of.is_some() {
            return Err(invalid("media_id", "a preview goes with its media: send that"));
        }
        // Unsent uploads are discarded after media.unsent_ttl_secs; one is
        // accepted only until well before, so no send races its discarding.
        let age = std::time::Duration::from_millis(self.now().0.saturating_sub(record.uploaded_at.0));
        if record.first_seq.is_none() && age > self.media_config().send_deadline() {
            return Err(WireError::new(ErrorCode::NOT_FOUND, "the upload is too old to send: upload the file again"));
        }
        Ok(record)
    }

    /// A media message's content: the sender's upload for this conversation,
    /// described by what natterd received (never by what the client claims).
    async fn media_to_send(
        &self,
        me: &Identity,
        conversation: ConversationId,
        m: wire::Media,
    ) -> Result<Content, WireError> {
        let record = self.sendable_upload(me, conversation, &m.media_id).await?;
        Ok(Content::Media(crate::domain::MediaRef {
            media_id: record.media_id,
            file_name: record.file_name,
            mime_type: record.mime_type,
            size: record.size,
            sha256: record.sha256,
            width: record.width,
            height: record.height,
            duration_ms: record.duration_ms,
            caption: m.caption,
            preview: record.preview,
        }))
    }

    pub(super) async fn history(&self, me: &Identity, req: wire::GetHistory) -> Result<Reply, WireError> {
        let id = ConversationId::parse(&req.conversation_id)?;
        let visible = self.readable_upto(me.user_id, id).await?;
        let limit = match req.limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let page = match (req.before_seq, req.after_seq) {
            (0, 0) => HistoryPage::Latest { limit },
            (b, 0) => HistoryPage::Before { seq: Seq(b), limit },
            (0, a) => HistoryPage::After { seq: Seq(a), limit },
            _ => return Err(invalid("get_history", "set at most one of before_seq and after_seq")),
        };
        let (messages, mut has_more) = self.store.messages(id, page, visible).await?;
        let mut out = Vec::with_capacity(messages.len());
        for m in &messages {
            out.push(convert::message_record(m, &*self.user_info(m.sender_user_id).await?));
        }
        // Keep the page within one frame, dropping the messages farthest from the anchor.
        let budget = self.frame_budget();
        let mut size: usize = out.iter().map(|m| m.encoded_len() + 4).sum();
        while size > budget && !out.is_empty() {
            let dropped = match page {
                HistoryPage::After { .. } => out.pop(),
                HistoryPage::Latest { .. } | HistoryPage::Before { .. } => Some(out.remove(0)),
            };
            size -= dropped.map_or(0, |m| m.encoded_len() + 4);
            has_more = true;
        }
        Ok(Reply::History(wire::HistoryPage { messages: out, has_more }))
    }

    pub(super) async fn list_conversations(
        &self,
        me: &Identity,
        req: wire::ListConversations,
    ) -> Result<Reply, WireError> {
        let limit = match req.limit {
            0 => DEFAULT_CONVERSATION_LIST_LIMIT,
            n => n.min(MAX_CONVERSATION_LIST_LIMIT),
        };
        let before = (req.before_activity != 0).then_some(req.before_activity);
        // One more than asked tells whether more exist.
        let mut summaries = self.store.conversations_for_user(me.user_id, before, limit + 1).await?;
        let mut has_more = summaries.len() > limit as usize;
        summaries.truncate(limit as usize);
        let budget = self.frame_budget();
        let mut size = 0;
        let mut out = Vec::with_capacity(summaries.len());
        for s in &summaries {
            let conv = self.conversation_to_wire(&s.state, Some(s)).await?;
            size += conv.encoded_len() + 4;
            if size > budget {
                has_more = true;
                break;
            }
            out.push(conv);
        }
        Ok(Reply::Conversations(wire::ConversationList { conversations: out, has_more }))
    }

    pub(super) async fn mark_read(&self, me: &Identity, req: wire::MarkRead) -> Result<Reply, WireError> {
        let id = ConversationId::parse(&req.conversation_id)?;
        let visible = self.readable_upto(me.user_id, id).await?;
        let state = self
            .store
            .conversation(id)
            .await?
            .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "no such conversation"))?;
        let last = visible.unwrap_or(state.version).min(state.version);
        let current = self.store.receipt(id, me.user_id).await?.read;
        let Some(event) = conversation::decide_read(id, me.user_id, current, Seq(req.seq), last, self.now()) else {
            // Not forward: ignored, not an error.
            return Ok(Reply::Read(wire::ReadOk { read_up_to: current.0 }));
        };
        let seq = match &event {
            crate::domain::Event::ReadUpTo { seq, .. } => *seq,
            _ => unreachable!("decide_read returns ReadUpTo"),
        };
        self.store
            .append(vec![StreamAppend::new(
                StreamName::receipts(id),
                ExpectedVersion::Any,
                vec![NewEvent::fresh(event)],
            )])
            .await?;
        Ok(Reply::Read(wire::ReadOk { read_up_to: seq.0 }))
    }

    /// Receipts show who is in the conversation now, so they are for current
    /// members only.
    pub(super) async fn get_receipts(&self, me: &Identity, req: wire::GetReceipts) -> Result<Reply, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        let id = state.id;
        let seq = Seq(req.seq);
        let message = self
            .store
            .message(id, seq)
            .await?
            .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, format!("no message with seq {}", seq.0)))?;
        let receipts = self.store.receipts(id).await?;
        let mut delivered_to = Vec::new();
        let mut read_by = Vec::new();
        let others: Vec<_> = state.member_ids().filter(|u| *u != message.sender_user_id).collect();
        for user in &others {
            let r = receipts.iter().find(|r| r.user == *user);
            let read = r.is_some_and(|r| r.read >= seq);
            // Reading implies having received.
            let delivered = read || r.is_some_and(|r| r.delivered >= seq);
            if delivered || read {
                let info = self.user_info(*user).await?;
                let member = convert::member(*user, None, &info);
                if delivered {
                    delivered_to.push(member.clone());
                }
                if read {
                    read_by.push(member);
                }
            }
        }
        let status = if !others.is_empty() && read_by.len() == others.len() {
            wire::ReceiptStatus::Read
        } else if !others.is_empty() && delivered_to.len() == others.len() {
            wire::ReceiptStatus::Delivered
        } else {
            wire::ReceiptStatus::Sent
        };
        Ok(Reply::Receipts(wire::Receipts {
            seq: seq.0,
            sender_user_id: message.sender_user_id.to_string(),
            status: status as i32,
            member_count: others.len() as u32,
            delivered_count: delivered_to.len() as u32,
            delivered_to,
            read_by,
        }))
    }
}
