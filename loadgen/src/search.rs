//! The search benchmark (issue 13): a corpus written through natterd, then
//! queries timed as a person makes them.
//!
//! `writers` users write `messages` messages over `conversations` groups
//! (each group: its owner, the next writer, and for the first `member_of`
//! groups the searcher), `in_flight` sends outstanding per writer. The texts
//! are 6 to 14 words of a 4,096-word vocabulary drawn with a skew (a few words
//! common, most rare), so queries hit anything from a handful to many
//! thousands of messages. Then the searcher, a member of `member_of` of the
//! groups, waits until the index has caught up (a marker sent last is found)
//! and runs `queries` searches one after another, cycling through four kinds:
//! one word, two words, a quoted phrase, and a three-letter prefix (the last
//! word of a query is a prefix: type-ahead). Every search is filtered to what
//! the searcher may read inside the index, which is what the p99 measures.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use natter_proto::wire;

use crate::{users, Target};

const SYLLABLES: [&str; 16] =
    ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "da", "fu", "go", "hi", "ja", "ze", "bo"];

/// A small deterministic generator (xorshift64*): the corpus is the same on
/// every run with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word of the vocabulary, skewed towards the first ones.
    fn word(&mut self) -> String {
        let index = (self.unit().powi(3) * 4096.0) as usize;
        (0..3).map(|k| SYLLABLES[(index >> (4 * k)) & 15]).collect()
    }

    fn text(&mut self) -> String {
        let n = 6 + (self.next() % 9) as usize;
        (0..n).map(|_| self.word()).collect::<Vec<_>>().join(" ")
    }
}

/// The four kinds of query, in the order they are run.
const KINDS: [&str; 4] = ["word", "two words", "phrase", "prefix"];

/// What a run measured.
pub struct SearchReport {
    pub messages: usize,
    pub conversations: usize,
    pub member_of: usize,
    /// Messages written per second (acknowledged, so durable).
    pub fill_per_second: f64,
    /// From the last acknowledgement until the searcher found the marker.
    pub catch_up: Duration,
    /// Latency per kind, µs, from request to answer.
    pub latency: Vec<(&'static str, Histogram<u64>)>,
    /// Hits on the first page, summed over every query.
    pub hits: u64,
    pub empty: usize,
}

impl SearchReport {
    fn all(&self) -> Histogram<u64> {
        let mut all = Histogram::new(3).expect("histogram");
        for (_, h) in &self.latency {
            all.add(h).expect("same bounds");
        }
        all
    }

    pub fn table(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut out = format!(
            "search: {} messages in {} groups, the searcher in {}\n\
             corpus written                   {:>10.0} msg/s\n\
             index caught up                  {:>10.2} s after the last acknowledgement\n",
            self.messages,
            self.conversations,
            self.member_of,
            self.fill_per_second,
            self.catch_up.as_secs_f64()
        );
        let all = self.all();
        for (kind, h) in self.latency.iter().map(|(k, h)| (*k, h)).chain([("all", &all)]) {
            out.push_str(&format!(
                "{kind:<10} {:>6} queries  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
                h.len(),
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            ));
        }
        out.push_str(&format!(
            "first pages: {} hits in all, {} empty of {} queries\n",
            self.hits,
            self.empty,
            all.len()
        ));
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let figures = |h: &Histogram<u64>| {
            serde_json::json!({
                "queries": h.len(),
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "max_us": h.max(),
            })
        };
        let kinds: serde_json::Map<String, serde_json::Value> =
            self.latency.iter().map(|(k, h)| ((*k).to_owned(), figures(h))).collect();
        serde_json::json!({
            "scenario": "search",
            "messages": self.messages,
            "conversations": self.conversations,
            "member_of": self.member_of,
            "fill_msgs_per_s": self.fill_per_second,
            "catch_up_s": self.catch_up.as_secs_f64(),
            "latency": figures(&self.all()),
            "by_kind": kinds,
            "hits": self.hits,
            "empty": self.empty,
        })
    }
}

/// How the benchmark is shaped.
#[derive(Debug, Clone, Copy)]
pub struct SearchLoad {
    pub conversations: usize,
    pub messages: usize,
    pub member_of: usize,
    pub writers: usize,
    pub in_flight: usize,
    pub queries: usize,
}

impl SearchLoad {
    /// # Errors
    /// Shapes that cannot be run.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.writers >= 2, "--writers must be at least 2 (each group has two writers)");
        anyhow::ensure!(self.conversations >= 1, "--conversations must be at least 1");
        anyhow::ensure!(
            (1..=self.conversations).contains(&self.member_of),
            "--member-of must be between 1 and --conversations"
        );
        anyhow::ensure!(self.in_flight >= 1 && self.queries >= 1, "--in-flight and --queries must be at least 1");
        Ok(())
    }
}

/// Runs the benchmark (see the module's text).
///
/// # Errors
/// natterd refuses a request, or the index does not catch up within ten minutes.
pub async fn search(target: &Target, load: SearchLoad) -> anyhow::Result<SearchReport> {
    load.check()?;
    let writers = users(target, "search-writer", load.writers).await?;
    let searcher = users(target, "search-reader", 1).await?.pop().context("the searcher")?;

    // The groups, created by each writer in turn.
    let mut groups: Vec<Vec<String>> = vec![Vec::new(); load.writers];
    let made = futures::future::join_all(writers.iter().enumerate().map(|(w, writer)| {
        let (writers, searcher) = (&writers, &searcher);
        async move {
            let mut mine = Vec::new();
            for i in (w..load.conversations).step_by(load.writers) {
                let mut members = vec![writers[(w + 1) % writers.len()].email.as_str()];
                if i < load.member_of {
                    members.push(searcher.email.as_str());
                }
                let group = writer.client.create_group(&format!("search {i}"), &members).await?;
                mine.push(group.conversation_id);
            }
            anyhow::Ok(mine)
        }
    }))
    .await;
    for (w, mine) in made.into_iter().enumerate() {
        groups[w] = mine.context("creating the benchmark's groups")?;
    }

    // The corpus: each writer writes its share into its own groups.
    let started = Instant::now();
    let written = futures::future::join_all(writers.iter().enumerate().map(|(w, writer)| {
        let mine = &groups[w];
        let share = load.messages / load.writers + usize::from(w < load.messages % load.writers);
        async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
            let texts: Vec<String> = (0..share).map(|_| rng.text()).collect();
            let mut sends = futures::stream::iter(texts.into_iter().enumerate().map(|(n, text)| {
                let conversation = &mine[n % mine.len()];
                async move { writer.client.send_text(conversation, &format!("s-{w}-{n}"), &text).await }
            }))
            .buffer_unordered(load.in_flight);
            while let Some(sent) = sends.next().await {
                sent.context("writing the corpus")?;
            }
            anyhow::Ok(())
        }
    }))
    .await;
    for w in written {
        w?;
    }
    // The marker, last, in a group the searcher is in.
    let marker = format!("zqmarker{}", uuid::Uuid::new_v4().simple());
    writers[0].client.send_text(&groups[0][0], "s-marker", &marker).await?;
    let acked = Instant::now();
    let fill_per_second = (load.messages + 1) as f64 / acked.duration_since(started).as_secs_f64();

    let deadline = acked + Duration::from_secs(600);
    loop {
        match searcher.client.search(wire::Search { query: marker.clone(), ..Default::default() }).await {
            Ok(r) if !r.groups.is_empty() => break,
            // Searchable once the index has committed it; UNAVAILABLE while it rebuilds.
            Ok(_) | Err(natter_client::ClientError::Server { code: natter_proto::ErrorCode::UNAVAILABLE, .. }) => {}
            Err(e) => return Err(e).context("searching for the marker"),
        }
        anyhow::ensure!(Instant::now() < deadline, "the index did not catch up within ten minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up = acked.elapsed();

    // The queries, one at a time, from another seed than the corpus.
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    let mut latency: Vec<(&'static str, Histogram<u64>)> =
        KINDS.iter().map(|k| (*k, Histogram::new(3).expect("histogram"))).collect();
    let (mut hits, mut empty) = (0u64, 0usize);
    for q in 0..load.queries {
        let kind = q % KINDS.len();
        let query = match kind {
            0 => rng.word(),
            1 => format!("{} {}", rng.word(), rng.word()),
            2 => format!("\"{} {}\"", rng.word(), rng.word()),
            _ => rng.word()[..3].to_owned(),
        };
        let t = Instant::now();
        let r = searcher
            .client
            .search(wire::Search { query: query.clone(), limit: 20, ..Default::default() })
            .await
            .with_context(|| format!("searching for {query}"))?;
        latency[kind].1.record(t.elapsed().as_micros() as u64)?;
        let n: usize = r.groups.iter().map(|g| g.hits.len()).sum();
        hits += n as u64;
        empty += usize::from(n == 0);
    }
    Ok(SearchReport {
        messages: load.messages,
        conversations: load.conversations,
        member_of: load.member_of,
        fill_per_second,
        catch_up,
        latency,
        hits,
        empty,
    })
}
