//! The embedded search backend: a tantivy index in `<data_dir>/search/`.
//!
//! One document per message, keyed `<conversation>:<seq>` (added again, it
//! replaces itself). The log position the index holds is each commit's
//! payload, written in the same atomic `meta.json` replacement as the
//! segments it describes. An index that cannot be opened, or that has
//! another schema, is moved aside and rebuilt from the log. Merges follow
//! tantivy's log merge policy, on the writer's one thread.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ::tantivy::collector::TopDocs;
use ::tantivy::query::{
    BooleanQuery, ConstScoreQuery, FuzzyTermQuery, Occur, PhraseQuery, Query as TQuery, RangeQuery, TermQuery,
    TermSetQuery,
};
use ::tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED, STRING,
};
use ::tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentReader, TantivyDocument, Term,
};
use async_trait::async_trait;
use uuid::Uuid;

use super::text::{self, Clause};
use super::{Doc, Forget, Hit, Page, Query, SearchError, SearchIndex};
use crate::domain::{ConversationId, Millis, Seq, UserId};
use crate::store::Position;

/// The index's directory under `<data_dir>/search/`; a new schema gets a new name.
const DIR: &str = "tantivy-v1";

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    conversation: Field,
    seq: Field,
    sender: Field,
    at: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(text::ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        conversation: b.add_text_field("conversation", STRING | STORED),
        seq: b.add_u64_field("seq", INDEXED | STORED | FAST),
        sender: b.add_text_field("sender", STRING | STORED),
        at: b.add_u64_field("at", INDEXED | STORED | FAST),
        text: b.add_text_field("text", text_options),
    };
    (b.build(), fields)
}

fn closed() -> SearchError {
    SearchError::Index("the index is closed".into())
}

fn index_error(e: impl std::fmt::Display) -> SearchError {
    SearchError::Index(e.to_string())
}

/// The tantivy backend.
pub struct TantivyIndex {
    inner: Arc<Inner>,
}

struct Inner {
    index: Index,
    /// `None` once closed.
    writer: Mutex<Option<IndexWriter<TantivyDocument>>>,
    reader: IndexReader,
    fields: Fields,
}

impl TantivyIndex {
    /// Opens the index under `dir` (`<data_dir>/search`), making it when
    /// missing and rebuilding it (from position 0) when it is unreadable.
    ///
    /// # Errors
    /// The directory cannot be made or the index cannot be created.
    pub fn open(dir: &Path, writer_memory_bytes: usize) -> Result<Self, SearchError> {
        let path = dir.join(DIR);
        let (schema, fields) = schema();
        let index = match open_existing(&path, &schema) {
            Ok(Some(index)) => index,
            Ok(None) => create(&path, schema)?,
            Err(reason) => {
                let aside = aside_name(dir);
                tracing::warn!(index = %path.display(), moved_to = %aside.display(), %reason, "search index unreadable; rebuilding it from the log");
                std::fs::rename(&path, &aside).map_err(index_error)?;
                create(&path, schema)?
            }
        };
        index.tokenizers().register(text::ANALYZER, text::analyzer());
        // tantivy asks at least 15 MB per indexing thread. Only the natterd
        // holding the data directory opens the writer, so a busy lock is a
        // moment's overlap (a child process forked elsewhere in this process
        // shares the lock's file until it execs): wait for it, at most 5 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let writer = loop {
            match index.writer_with_num_threads(1, writer_memory_bytes.max(15_000_000)) {
                Err(::tantivy::TantivyError::LockFailure(::tantivy::directory::error::LockError::LockBusy, _))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.map_err(index_error)?,
            }
        };
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(index_error)?;
        Ok(Self { inner: Arc::new(Inner { index, writer: Mutex::new(Some(writer)), reader, fields }) })
    }

    /// Deletes the index under `dir` (`<data_dir>/search`), if there is one.
    ///
    /// # Errors
    /// It cannot be deleted.
    pub fn drop_in(dir: &Path) -> Result<(), SearchError> {
        match std::fs::remove_dir_all(dir.join(DIR)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(index_error(e)),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<T, SearchError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(index_error)?
    }
}

/// `Ok(None)`: no index there yet; `Err`: one that cannot be used.
fn open_existing(path: &Path, schema: &Schema) -> Result<Option<Index>, String> {
    if !path.join("meta.json").exists() {
        return Ok(None);
    }
    let index = Index::open_in_dir(path).map_err(|e| e.to_string())?;
    if index.schema() != *schema {
        return Err("its schema is not this natterd's".into());
    }
    // Every segment the last commit names must be readable.
    index.load_metas().map_err(|e| e.to_string())?;
    index.reader().map_err(|e| e.to_string())?;
    Ok(Some(index))
}

fn create(path: &Path, schema: Schema) -> Result<Index, SearchError> {
    if path.exists() {
        // A directory without meta.json: a creation that never finished.
        std::fs::remove_dir_all(path).map_err(index_error)?;
    }
    std::fs::create_dir_all(path).map_err(index_error)?;
    Index::create_in_dir(path, schema).map_err(index_error)
}

fn aside_name(dir: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    dir.join(format!("{DIR}.unreadable-{stamp}"))
}

fn key(conversation: ConversationId, seq: Seq) -> String {
    format!("{}:{}", conversation.0, seq.0)
}

impl Inner {
    fn text_term(&self, word: &str) -> Term {
        Term::from_field_text(self.fields.text, word)
    }

    fn clause(&self, clause: &Clause) -> Box<dyn TQuery> {
        match clause {
            Clause::Term(w) => Box::new(TermQuery::new(self.text_term(w), IndexRecordOption::WithFreqs)),
            Clause::Phrase(ws) => Box::new(PhraseQuery::new(ws.iter().map(|w| self.text_term(w)).collect())),
            Clause::Prefix(p) => Box::new(FuzzyTermQuery::new_prefix(self.text_term(p), 0, false)),
        }
    }

    fn conversation_term(&self, id: ConversationId) -> Term {
        Term::from_field_text(self.fields.conversation, &id.0.to_string())
    }

    /// The query: every clause, inside what the searcher may read. Filters
    /// score nothing, so relevance is the words' alone.
    fn query(&self, q: &Query) -> BooleanQuery {
        let f = self.fields;
        let filter =
            |q: Box<dyn TQuery>| -> (Occur, Box<dyn TQuery>) { (Occur::Must, Box::new(ConstScoreQuery::new(q, 0.0))) };
        let mut must: Vec<(Occur, Box<dyn TQuery>)> = q.clauses.iter().map(|c| (Occur::Must, self.clause(c))).collect();
        let open: Vec<Term> =
            q.visible.iter().filter(|v| v.upto.is_none()).map(|v| self.conversation_term(v.conversation)).collect();
        let mut visible: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
        if !open.is_empty() {
            visible.push((Occur::Should, Box::new(TermSetQuery::new(open))));
        }
        for v in &q.visible {
            if let Some(upto) = v.upto {
                let within = BooleanQuery::new(vec![
                    (
                        Occur::Must,
                        Box::new(TermQuery::new(self.conversation_term(v.conversation), IndexRecordOption::Basic)),
                    ),
                    (
                        Occur::Must,
                        Box::new(RangeQuery::new(
                            Bound::Unbounded,
                            Bound::Included(Term::from_field_u64(f.seq, upto.0)),
                        )),
                    ),
                ]);
                visible.push((Occur::Should, Box::new(within)));
            }
        }
        must.push(filter(Box::new(BooleanQuery::new(visible))));
        if let Some(from) = q.from {
            let sender = Term::from_field_text(f.sender, &from.0.to_string());
            must.push(filter(Box::new(TermQuery::new(sender, IndexRecordOption::Basic))));
        }
        if q.after.is_some() || q.before.is_some() {
            let lower = q.after.map_or(Bound::Unbounded, |a| Bound::Excluded(Term::from_field_u64(f.at, a.0)));
            let upper = q.before.map_or(Bound::Unbounded, |b| Bound::Excluded(Term::from_field_u64(f.at, b.0)));
            must.push(filter(Box::new(RangeQuery::new(lower, upper))));
        }
        BooleanQuery::new(must)
    }

    fn search(&self, q: &Query) -> Result<Page, SearchError> {
        if q.visible.is_empty() || q.limit == 0 {
            return Ok(Page { hits: Vec::new(), more: false });
        }
        let searcher = self.reader.searcher();
        let query = self.query(q);
        // Relevance first, then the newer message: by time, and by seq
        // among messages of the same millisecond (a stable order, so pages
        // at an offset neither repeat nor skip a hit).
        let collector =
            TopDocs::with_limit(q.limit + 1).and_offset(q.offset).tweak_score(move |segment: &SegmentReader| {
                let at = segment.fast_fields().u64("at").ok();
                let seq = segment.fast_fields().u64("seq").ok();
                move |doc, score: Score| {
                    let of = |c: &Option<_>| c.as_ref().and_then(|c: &::tantivy::columnar::Column<u64>| c.first(doc));
                    (score, of(&at).unwrap_or(0), of(&seq).unwrap_or(0))
                }
            });
        let found: Vec<((Score, u64, u64), DocAddress)> = searcher.search(&query, &collector).map_err(index_error)?;
        let more = found.len() > q.limit;
        let mut analyzer = text::analyzer();
        let mut hits = Vec::with_capacity(found.len().min(q.limit));
        for ((score, _, _), address) in found.into_iter().take(q.limit) {
            let doc: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            let str_of = |field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let u64_of = |field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or_default();
            let uuid_of =
                |field| Uuid::parse_str(&str_of(field)).map_err(|e| SearchError::Index(format!("a stored id: {e}")));
            let body = str_of(self.fields.text);
            hits.push(Hit {
                conversation: ConversationId(uuid_of(self.fields.conversation)?),
                seq: Seq(u64_of(self.fields.seq)),
                sender: UserId(uuid_of(self.fields.sender)?),
                at: Millis(u64_of(self.fields.at)),
                score,
                snippet: text::snippet(&mut analyzer, &body, &q.clauses),
            });
        }
        Ok(Page { hits, more })
    }
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    async fn checkpoint(&self) -> Result<Position, SearchError> {
        self.blocking(|inner| {
            let metas = inner.index.load_metas().map_err(index_error)?;
            match metas.payload {
                None => Ok(0),
                Some(p) => {
                    p.parse().map_err(|_| SearchError::Index(format!("a commit payload that is no position: {p:?}")))
                }
            }
        })
        .await
    }

    async fn add(&self, docs: Vec<Doc>) -> Result<(), SearchError> {
        self.blocking(move |inner| {
            let f = inner.fields;
            let guard = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            let writer = guard.as_ref().ok_or_else(closed)?;
            for d in docs {
                let k = key(d.conversation, d.seq);
                writer.delete_term(Term::from_field_text(f.key, &k));
                let mut doc = TantivyDocument::new();
                doc.add_text(f.key, &k);
                doc.add_text(f.conversation, d.conversation.0.to_string());
                doc.add_u64(f.seq, d.seq.0);
                doc.add_text(f.sender, d.sender.0.to_string());
                doc.add_u64(f.at, d.at.0);
                doc.add_text(f.text, &d.text);
                writer.add_document(doc).map_err(index_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn commit(&self, upto: Position) -> Result<(), SearchError> {
        self.blocking(move |inner| {
            let mut guard = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            let writer = guard.as_mut().ok_or_else(closed)?;
            let mut prepared = writer.prepare_commit().map_err(index_error)?;
            prepared.set_payload(&upto.to_string());
            prepared.commit().map_err(index_error)?;
            drop(guard);
            inner.reader.reload().map_err(index_error)
        })
        .await
    }

    async fn search(&self, query: Query) -> Result<Page, SearchError> {
        self.blocking(move |inner| inner.search(&query)).await
    }

    async fn forget(&self, what: Forget, upto: Position) -> Result<(), SearchError> {
        self.blocking(move |inner| {
            let mut guard = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            let writer = guard.as_mut().ok_or_else(closed)?;
            let f = inner.fields;
            match what {
                Forget::Sender(sender) => {
                    writer.delete_term(Term::from_field_text(f.sender, &sender.0.to_string()));
                }
                Forget::Before(conversation, before) => {
                    let old = BooleanQuery::new(vec![
                        (
                            Occur::Must,
                            Box::new(TermQuery::new(inner.conversation_term(conversation), IndexRecordOption::Basic))
                                as Box<dyn TQuery>,
                        ),
                        (
                            Occur::Must,
                            Box::new(RangeQuery::new(
                                Bound::Unbounded,
                                Bound::Excluded(Term::from_field_u64(f.at, before.0)),
                            )),
                        ),
                    ]);
                    writer.delete_query(Box::new(old)).map_err(index_error)?;
                }
            }
            let mut prepared = writer.prepare_commit().map_err(index_error)?;
            prepared.set_payload(&upto.to_string());
            prepared.commit().map_err(index_error)?;
            // A delete only marks documents; merging writes the segments anew
            // without them, and the old files are then removed.
            let segments = inner.index.searchable_segment_ids().map_err(index_error)?;
            if !segments.is_empty() {
                writer.merge(&segments).wait().map_err(index_error)?;
            }
            // Searchers of the old segments let go of them first.
            inner.reader.reload().map_err(index_error)?;
            writer.garbage_collect_files().wait().map_err(index_error)?;
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), SearchError> {
        self.blocking(|inner| {
            let writer = inner.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            match writer {
                // Dropping it releases the lock; waiting lets merges finish first.
                Some(w) => w.wait_merging_threads().map_err(index_error),
                None => Ok(()),
            }
        })
        .await
    }
}
