//! `Search` (spec/protocol.md section "Search"): the caller's visibility
//! (every conversation they are in, and those they left up to the seq they
//! left at: the rule history keeps) goes into the index query itself, so a
//! page is never short because of messages they may not read.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use natter_proto::wire;
use natter_proto::ErrorCode;

use super::{invalid, Identity, Reply, Service, WireError};
use crate::domain::{ConversationId, Email, Millis};
use crate::search::{self, text, Query, SearchError, Visible};

/// Hits per page when the request names none, and the most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 50;
/// Hits past this many are not served (narrow the query instead).
const MAX_OFFSET: usize = 1000;
/// Conversations read per page when collecting the caller's.
const CONVERSATION_PAGE: u32 = 500;

fn search_error(e: SearchError) -> WireError {
    match e {
        SearchError::Store(e) => e.into(),
        SearchError::Index(reason) => {
            tracing::error!(%reason, "search failed");
            let mut e = WireError::new(ErrorCode::UNAVAILABLE, "search is failing on this server; retry");
            e.retry_after_ms = 1000;
            e
        }
    }
}

/// A cursor is the number of hits already served, as `o<n>`; opaque to clients.
fn parse_cursor(cursor: &str) -> Result<usize, WireError> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .strip_prefix('o')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n <= MAX_OFFSET)
        .ok_or_else(|| invalid("cursor", "not a cursor this server gave"))
}

impl Service {
    /// Searches the messages `me` may read.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (query, limit, cursor, times, ids), `NOT_FOUND` /
    /// `NOT_A_MEMBER` (the conversation, as for history), `UNAVAILABLE`
    /// (search off, or the index still being built: with `retry_after_ms`).
    pub(super) async fn search(&self, me: &Identity, req: wire::Search) -> Result<Reply, WireError> {
        let Some(handle) = &self.search else {
            return Err(WireError::new(ErrorCode::UNAVAILABLE, "search is turned off on this server"));
        };
        let limit = match req.limit as usize {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            _ => return Err(invalid("limit", "at most 50")),
        };
        let offset = parse_cursor(&req.cursor)?;
        let clauses = text::parse(&mut text::analyzer(), &req.query)
            .map_err(|e| WireError::new(ErrorCode::INVALID_ARGUMENT, format!("query: {e}")))?;
        if req.after_ms != 0 && req.before_ms != 0 && req.after_ms >= req.before_ms {
            return Err(invalid("after_ms", "must be before before_ms"));
        }
        let (mut visible, names) = self.readable_conversations(me).await?;
        if !req.conversation_id.is_empty() {
            let id = ConversationId::parse(&req.conversation_id)?;
            let upto = self.readable_upto(me.user_id, id).await?;
            visible = vec![Visible { conversation: id, upto }];
        }
        let from = if req.from_email.is_empty() {
            None
        } else {
            let email = Email::parse(&req.from_email)?;
            match self.store.user_by_email(&email).await? {
                Some(user) => Some(user.user_id),
                // Nobody wrote anything.
                None => return Ok(Reply::Search(wire::SearchResults::default())),
            }
        };
        if !handle.progress.caught_up.load(Ordering::Relaxed) {
            let mut e = WireError::new(ErrorCode::UNAVAILABLE, "the search index is being built; retry");
            e.retry_after_ms = 2000;
            return Err(e);
        }
        let query = Query {
            clauses,
            visible,
            from,
            after: (req.after_ms != 0).then_some(Millis(req.after_ms)),
            before: (req.before_ms != 0).then_some(Millis(req.before_ms)),
            offset,
            limit,
        };
        let page = handle.index.search(query).await.map_err(search_error)?;
        let served = offset + page.hits.len();
        let mut groups: Vec<wire::SearchGroup> = Vec::new();
        let mut group_of: HashMap<ConversationId, usize> = HashMap::new();
        for hit in page.hits {
            let g = *group_of.entry(hit.conversation).or_insert_with(|| {
                groups.push(wire::SearchGroup {
                    conversation_id: hit.conversation.0.to_string(),
                    name: names.get(&hit.conversation).cloned().unwrap_or_default(),
                    hits: Vec::new(),
                });
                groups.len() - 1
            });
            let sender = self.user_info(hit.sender).await?;
            groups[g].hits.push(wire::SearchHit {
                seq: hit.seq.0,
                at_ms: hit.at.0,
                sender_user_id: hit.sender.0.to_string(),
                highlights: hit
                    .snippet
                    .highlights
                    .iter()
                    .map(|&(start, end)| wire::Highlight { start: start as u32, end: end as u32 })
                    .collect(),
                snippet: hit.snippet.text,
                sender_email: sender.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default(),
                sender_name: sender.display_name.clone(),
            });
        }
        let next_cursor = if page.more && served < MAX_OFFSET { format!("o{served}") } else { String::new() };
        Ok(Reply::Search(wire::SearchResults { groups, next_cursor }))
    }

    /// Every conversation `me` is or was in, with how far they may read it,
    /// and the groups' names.
    async fn readable_conversations(
        &self,
        me: &Identity,
    ) -> Result<(Vec<Visible>, HashMap<ConversationId, String>), WireError> {
        let mut visible = Vec::new();
        let mut names = HashMap::new();
        let mut before = None;
        loop {
            let page = self.store.conversations_for_user(me.user_id, before, CONVERSATION_PAGE).await?;
            for s in &page {
                visible.push(Visible { conversation: s.state.id, upto: s.left_at });
                if let Some(name) = &s.state.name {
                    names.insert(s.state.id, name.clone());
                }
            }
            match page.last() {
                Some(last) if page.len() == CONVERSATION_PAGE as usize => before = Some(last.activity),
                _ => return Ok((visible, names)),
            }
        }
    }
}

/// The search backend `natterd` was started with, if any.
pub type Handle = Option<search::SearchHandle>;
