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
        let (visible, names) = if req.conversation_id.is_empty() {
            let mut names = HashMap::new();
            let mut visible = Vec::new();
            for c in self.store.readable_conversations(me.user_id).await? {
                visible.push(Visible { conversation: c.conversation, upto: c.left_at });
                if let Some(name) = c.name {
                    names.insert(c.conversation, name);
                }
            }
            (visible, names)
        } else {
            let id = ConversationId::parse(&req.conversation_id)?;
            let upto = self.readable_upto(me.user_id, id).await?;
            let names = match self.conversation(id).await?.and_then(|c| c.name.clone()) {
                Some(name) => HashMap::from([(id, name)]),
                None => HashMap::new(),
            };
            (vec![Visible { conversation: id, upto }], names)
        };
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
}

/// The search backend `natterd` was started with, if any.
pub type Handle = Option<search::SearchHandle>;

/// Directory answers when the request names no limit, and the most.
const DEFAULT_DIRECTORY_LIMIT: usize = 10;
const MAX_DIRECTORY_LIMIT: usize = 50;
const MAX_PREFIX_BYTES: usize = 254;

/// How well `prefix` (folded) matches `name`: 0 the whole name, 1 its start,
/// 2 the start of a later word; `None` not at all.
fn rank(analyzer: &mut ::tantivy::tokenizer::TextAnalyzer, prefix: &str, name: &str) -> Option<u8> {
    let words: Vec<String> = text::tokens(analyzer, name).into_iter().map(|t| t.text).collect();
    let folded = words.join(" ");
    if folded == prefix {
        Some(0)
    } else if folded.starts_with(prefix) {
        Some(1)
    } else if words.iter().skip(1).any(|w| w.starts_with(prefix)) {
        Some(2)
    } else {
        None
    }
}

impl Service {
    /// People and conversations whose name (or email) starts with the prefix:
    /// `me`'s groups, people in `me`'s current conversations, and anyone else
    /// only by their exact email.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` (prefix, limit).
    pub(super) async fn search_directory(&self, me: &Identity, req: wire::SearchDirectory) -> Result<Reply, WireError> {
        let limit = match req.limit as usize {
            0 => DEFAULT_DIRECTORY_LIMIT,
            n if n <= MAX_DIRECTORY_LIMIT => n,
            _ => return Err(invalid("limit", "at most 50")),
        };
        let raw = req.prefix.trim();
        if raw.len() > MAX_PREFIX_BYTES {
            return Err(invalid("prefix", "at most 254 bytes"));
        }
        let mut analyzer = text::analyzer();
        let prefix: String = text::tokens(&mut analyzer, raw).into_iter().map(|t| t.text).collect::<Vec<_>>().join(" ");
        if prefix.is_empty() {
            return Err(invalid("prefix", "no letters or digits"));
        }
        let mut conversations: Vec<(u8, String, wire::DirectoryConversation)> = Vec::new();
        let mut people: HashMap<crate::domain::UserId, (u8, wire::DirectoryPerson)> = HashMap::new();
        for readable in self.store.readable_conversations(me.user_id).await? {
            let active = readable.left_at.is_none();
            if let Some(name) = &readable.name {
                if let Some(r) = rank(&mut analyzer, &prefix, name) {
                    let c = wire::DirectoryConversation {
                        conversation_id: readable.conversation.0.to_string(),
                        name: name.clone(),
                        active,
                    };
                    conversations.push((r, name.to_lowercase(), c));
                }
            }
            // A former member does not learn who is in the group now.
            if !active {
                continue;
            }
            let Some(state) = self.conversation(readable.conversation).await? else { continue };
            for m in &state.members {
                if m.user == me.user_id || people.contains_key(&m.user) {
                    continue;
                }
                let info = self.user_info(m.user).await?;
                let email = info.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default();
                let by_name = rank(&mut analyzer, &prefix, &info.display_name);
                let by_email = (!email.is_empty() && email.starts_with(&raw.to_lowercase())).then_some(1);
                if let Some(r) = by_name.into_iter().chain(by_email).min() {
                    let r = if email == raw.to_lowercase() { 0 } else { r };
                    let p = wire::DirectoryPerson {
                        user_id: m.user.0.to_string(),
                        email,
                        display_name: info.display_name.clone(),
                    };
                    people.insert(m.user, (r, p));
                }
            }
        }
        // Anyone else: only by their whole email address.
        if let Ok(email) = Email::parse(raw) {
            if let Some(user) = self.store.user_by_email(&email).await? {
                if user.user_id != me.user_id && !people.contains_key(&user.user_id) {
                    let p = wire::DirectoryPerson {
                        user_id: user.user_id.0.to_string(),
                        email: email.as_str().to_owned(),
                        display_name: user.display_name.clone(),
                    };
                    people.insert(user.user_id, (0, p));
                }
            }
        }
        conversations.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut people: Vec<(u8, wire::DirectoryPerson)> = people.into_values().collect();
        people.sort_by(|a, b| {
            (a.0, a.1.display_name.to_lowercase(), &a.1.email).cmp(&(b.0, b.1.display_name.to_lowercase(), &b.1.email))
        });
        Ok(Reply::Directory(wire::DirectoryResults {
            conversations: conversations.into_iter().take(limit).map(|c| c.2).collect(),
            people: people.into_iter().take(limit).map(|p| p.1).collect(),
        }))
    }
}
