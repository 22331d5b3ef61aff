//! How natter cuts text into words, for every search backend: the tokenizer,
//! the query syntax (spec/protocol.md, "Search") and snippets. Pure functions.
//!
//! A word is a run of letters and digits, lower-cased, accents folded
//! (`é` → `e`, `ß` → `ss`: tantivy's ASCII folding). Chinese, Japanese and
//! Korean have no spaces between words, so a run of their characters becomes
//! overlapping bigrams (`東京都` → `東京`, `京都`; a lone character stays one
//! token): a word of two or more characters is found as the phrase of its
//! bigrams.

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the analyzer is registered under in a tantivy index.
pub const ANALYZER: &str = "natter";
/// Longer tokens are dropped (a pasted hash is not a word anyone searches).
const MAX_TOKEN_BYTES: usize = 64;
/// The most query words (phrases count their words).
pub const MAX_QUERY_TERMS: usize = 16;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 512;

/// Whether `c` is written without spaces between words (Han, kana, Hangul).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0x3130..=0x318F    // Hangul compatibility Jamo
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x2FFFF) // CJK Extensions B and later
}

/// Words and CJK bigrams, before lower-casing and folding.
#[derive(Clone, Default)]
pub struct WordTokenizer {
    tokens: Vec<Token>,
}

pub struct WordStream<'a> {
    tokens: &'a mut [Token],
    next: usize,
}

impl TokenStream for WordStream<'_> {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = WordStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordStream<'a> {
        self.tokens.clear();
        cut(text, &mut self.tokens);
        WordStream { tokens: &mut self.tokens, next: 0 }
    }
}

/// Appends `text`'s tokens to `out`, numbered from 0.
fn cut(text: &str, out: &mut Vec<Token>) {
    let mut position = 0;
    let mut push = |out: &mut Vec<Token>, from: usize, to: usize| {
        out.push(Token {
            offset_from: from,
            offset_to: to,
            position,
            text: text[from..to].to_owned(),
            position_length: 1,
        });
        position += 1;
    };
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if is_cjk(c) {
            // A run of CJK characters: overlapping pairs, or the one alone.
            let mut run = vec![(start, c)];
            while let Some(&(i, d)) = chars.peek() {
                if !is_cjk(d) {
                    break;
                }
                run.push((i, d));
                chars.next();
            }
            if run.len() == 1 {
                push(out, start, start + c.len_utf8());
            } else {
                for pair in run.windows(2) {
                    push(out, pair[0].0, pair[1].0 + pair[1].1.len_utf8());
                }
            }
        } else if c.is_alphanumeric() {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !d.is_alphanumeric() || is_cjk(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            push(out, start, end);
        }
    }
}

/// The analyzer every backend indexes and queries with.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// `text`'s tokens, analyzed.
pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    analyzer.token_stream(text).process(&mut |t| out.push(t.clone()));
    out
}

/// One part of a query: every part must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// One term.
    Term(String),
    /// Terms in this order, next to each other (a quoted phrase, a word that
    /// analyzes into several tokens, a CJK word's bigrams).
    Phrase(Vec<String>),
    /// Terms that start with this (the last word being typed).
    Prefix(String),
}

/// Why a query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query has no words to search for")]
    Empty,
    #[error("the query is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("the query has more than {MAX_QUERY_TERMS} words")]
    TooManyTerms,
    #[error("a quoted phrase is not closed")]
    UnclosedQuote,
}

/// Parses a query: words, `"quoted phrases"`, and the last word, when the
/// query does not end in a space or a quote, as a prefix. Every word the
/// analyzer keeps becomes a clause; a query of none is refused (never
/// silently "everything").
///
/// # Errors
/// [`QueryError`].
pub fn parse(analyzer: &mut TextAnalyzer, query: &str) -> Result<Vec<Clause>, QueryError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong);
    }
    if query.matches('"').count() % 2 == 1 {
        return Err(QueryError::UnclosedQuote);
    }
    let mut clauses = Vec::new();
    let mut terms = 0;
    let ends_open = query.chars().last().is_some_and(|c| c.is_alphanumeric());
    let parts: Vec<(bool, &str)> =
        query.split('"').enumerate().map(|(i, s)| (i % 2 == 1, s)).filter(|(_, s)| !s.trim().is_empty()).collect();
    let last_part = parts.len().saturating_sub(1);
    for (p, (quoted, part)) in parts.iter().enumerate() {
        if *quoted {
            let words: Vec<String> = tokens(analyzer, part).into_iter().map(|t| t.text).collect();
            terms += words.len();
            match words.len() {
                0 => {}
                1 => clauses.push(Clause::Term(words.into_iter().next().unwrap_or_default())),
                _ => clauses.push(Clause::Phrase(words)),
            }
            continue;
        }
        let words: Vec<&str> = part.split_whitespace().collect();
        for (w, word) in words.iter().enumerate() {
            let toks: Vec<Token> = tokens(analyzer, word);
            terms += toks.len();
            let typing = ends_open && p == last_part && w + 1 == words.len();
            match toks.len() {
                0 => {}
                1 if typing => {
                    clauses.push(Clause::Prefix(toks.into_iter().next().map(|t| t.text).unwrap_or_default()))
                }
                1 => clauses.push(Clause::Term(toks.into_iter().next().map(|t| t.text).unwrap_or_default())),
                // "e-mail", "東京都": its pieces next to each other.
                _ => clauses.push(Clause::Phrase(toks.into_iter().map(|t| t.text).collect())),
            }
        }
    }
    if terms > MAX_QUERY_TERMS {
        return Err(QueryError::TooManyTerms);
    }
    if clauses.is_empty() {
        return Err(QueryError::Empty);
    }
    Ok(clauses)
}

/// A piece of a message around what matched, with the matches marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub text: String,
    /// Byte ranges of `text` that matched, ascending, not overlapping.
    pub highlights: Vec<(usize, usize)>,
}

/// Bytes of context kept before the first match.
const BEFORE: usize = 40;
/// The longest snippet, in bytes.
const SNIPPET_BYTES: usize = 200;

/// The snippet of `text` for `clauses`: up to [`SNIPPET_BYTES`] bytes from a
/// little before the first match, every matching token marked.
pub fn snippet(analyzer: &mut TextAnalyzer, text: &str, clauses: &[Clause]) -> Snippet {
    let matches = |t: &str| {
        clauses.iter().any(|c| match c {
            Clause::Term(w) => w == t,
            Clause::Phrase(ws) => ws.iter().any(|w| w == t),
            Clause::Prefix(p) => t.starts_with(p.as_str()),
        })
    };
    let mut marks: Vec<(usize, usize)> = Vec::new();
    for t in tokens(analyzer, text) {
        if matches(&t.text) {
            match marks.last_mut() {
                // CJK bigrams overlap: one mark over the pair.
                Some(last) if t.offset_from <= last.1 => last.1 = last.1.max(t.offset_to),
                _ => marks.push((t.offset_from, t.offset_to)),
            }
        }
    }
    let first = marks.first().map_or(0, |m| m.0);
    let mut start = first.saturating_sub(BEFORE);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    // Begin at a word boundary when one is near.
    if start > 0 {
        if let Some(space) = text[start..first].find(char::is_whitespace) {
            start += space + 1;
        }
    }
    let mut end = (start + SNIPPET_BYTES).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let highlights =
        marks.into_iter().filter(|m| m.0 >= start && m.1 <= end).map(|(a, b)| (a - start, b - start)).collect();
    Snippet { text: text[start..end].to_owned(), highlights }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokens(&mut analyzer(), text).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn words_are_lower_cased_and_folded_and_cjk_runs_become_bigrams() {
        assert_eq!(words("Crème Brûlée, STRASSE straße!"), ["creme", "brulee", "strasse", "strasse"]);
        assert_eq!(words("東京都に行く"), ["東京", "京都", "都に", "に行", "行く"]);
        assert_eq!(words("see 東 and 한국어 text"), ["see", "東", "and", "한국", "국어", "text"]);
        assert_eq!(words("v2.0 e-mail"), ["v2", "0", "e", "mail"]);
        assert_eq!(words(&"x".repeat(MAX_TOKEN_BYTES + 1)), Vec::<String>::new());
        assert!(words("... !!! ---").is_empty());
    }

    #[test]
    fn queries_are_words_phrases_and_a_last_prefix() {
        let mut a = analyzer();
        let t = |s: &str| Clause::Term(s.into());
        let p = |s: &str| Clause::Prefix(s.into());
        let ph = |s: &[&str]| Clause::Phrase(s.iter().map(|w| (*w).to_owned()).collect());
        assert_eq!(parse(&mut a, "Café meet").unwrap(), [t("cafe"), p("meet")]);
        assert_eq!(parse(&mut a, "café meet ").unwrap(), [t("cafe"), t("meet")]);
        assert_eq!(parse(&mut a, "\"quick brown\" fox").unwrap(), [ph(&["quick", "brown"]), p("fox")]);
        assert_eq!(parse(&mut a, "fox \"quick brown\"").unwrap(), [t("fox"), ph(&["quick", "brown"])]);
        assert_eq!(parse(&mut a, "東京都").unwrap(), [ph(&["東京", "京都"])]);
        assert_eq!(parse(&mut a, "e-mail").unwrap(), [ph(&["e", "mail"])]);
        assert_eq!(parse(&mut a, "   ").unwrap_err(), QueryError::Empty);
        assert_eq!(parse(&mut a, "!!").unwrap_err(), QueryError::Empty);
        assert_eq!(parse(&mut a, "\"open").unwrap_err(), QueryError::UnclosedQuote);
        assert_eq!(parse(&mut a, &"a ".repeat(MAX_QUERY_TERMS + 1)).unwrap_err(), QueryError::TooManyTerms);
        assert_eq!(parse(&mut a, &"a".repeat(MAX_QUERY_BYTES + 1)).unwrap_err(), QueryError::TooLong);
    }

    #[test]
    fn snippets_mark_matches_on_char_boundaries() {
        let mut a = analyzer();
        let clauses = parse(&mut a, "brulee dess").unwrap();
        let s = snippet(&mut a, "Order the crème brûlée for dessert", &clauses);
        let marked: Vec<&str> = s.highlights.iter().map(|&(x, y)| &s.text[x..y]).collect();
        assert_eq!(marked, ["brûlée", "dessert"]);

        let long = format!("{} needle {}", "hay ".repeat(100), "straw ".repeat(100));
        let clauses = parse(&mut a, "needle ").unwrap();
        let s = snippet(&mut a, &long, &clauses);
        assert!(s.text.len() <= SNIPPET_BYTES && s.text.starts_with("hay"), "{:?}", s.text);
        assert_eq!(&s.text[s.highlights[0].0..s.highlights[0].1], "needle");

        let clauses = parse(&mut a, "東京都").unwrap();
        let s = snippet(&mut a, "我们在東京都见面", &clauses);
        assert_eq!(&s.text[s.highlights[0].0..s.highlights[0].1], "東京都");
    }
}
