//! PII redaction of transcripts before they leave the STT workers (so before WebSocket, AMQP,
//! transcript files and job results): payment card numbers (Luhn-checked), national ids
//! (US SSN layout `ddd-dd-dddd`), phone numbers, and configured patterns.
//!
//! Numbers are found as runs of tokens that are digits (with `-`, `.`, `(`, `)`, `/`
//! separators) or spoken digit words ("four one one one …", which is how Whisper often writes
//! a dictated number), so "4111 1111 1111 1111", "4111-1111-1111-1111" and "four one one
//! one …" are all one run. A run of 13–19 digits passing the Luhn check is a card; a single
//! `ddd-dd-dddd` token a national id; any other run of 7–15 digits a phone number, except a
//! single token that is an amount (`1,250.00`) or a date (`2026-11-29`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Punctuation that may end a number token ("…1111." ends a sentence).
const TRAILING: [char; 6] = ['.', ',', '?', '!', ';', ':'];

/// What was redacted, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Card,
    NationalId,
    Phone,
    Custom,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Card, Kind::NationalId, Kind::Phone, Kind::Custom];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::NationalId => "national_id",
            Kind::Phone => "phone",
            Kind::Custom => "custom",
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Kind::Card => "[REDACTED_CARD]",
            Kind::NationalId => "[REDACTED_ID]",
            Kind::Phone => "[REDACTED_PHONE]",
            Kind::Custom => "[REDACTED]",
        }
    }
}

#[derive(Debug)]
pub struct Redactor {
    patterns: Vec<regex::Regex>,
    counts: [AtomicU64; 4],
}

impl Redactor {
    /// `patterns`: extra regular expressions whose matches are redacted (`STT_REDACT_PATTERNS`).
    pub fn new(patterns: &[String]) -> Result<Redactor, String> {
        let patterns = patterns
            .iter()
            .map(|p| regex::Regex::new(p).map_err(|e| format!("pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Redactor {
            patterns,
            counts: Default::default(),
        })
    }

    /// Redactions so far, by kind (for metrics).
    pub fn counts(&self) -> [(Kind, u64); 4] {
        Kind::ALL.map(|k| (k, self.counts[k as usize].load(Ordering::Relaxed)))
    }

    /// `text` with every number and pattern of PII replaced by a placeholder.
    pub fn redact(&self, text: &str) -> String {
        let mut out = self.redact_numbers(text);
        for p in &self.patterns {
            let n = p.find_iter(&out).count();
            if n > 0 {
                self.counts[Kind::Custom as usize].fetch_add(n as u64, Ordering::Relaxed);
                out = p.replace_all(&out, Kind::Custom.placeholder()).into_owned();
            }
        }
        out
    }

    fn redact_numbers(&self, text: &str) -> String {
        // Tokens with their byte spans; a run is consecutive number tokens.
        let tokens: Vec<(usize, usize)> = text
            .split_whitespace()
            .map(|t| {
                let start = t.as_ptr() as usize - text.as_ptr() as usize;
                (start, start + t.len())
            })
            .collect();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut i = 0;
        while i < tokens.len() {
            if number_token(&text[tokens[i].0..tokens[i].1]).is_none() {
                i += 1;
                continue;
            }
            let mut j = i;
            let mut digits = String::new();
            while j < tokens.len() {
                match number_token(&text[tokens[j].0..tokens[j].1]) {
                    Some(d) => digits.push_str(&d),
                    None => break,
                }
                j += 1;
            }
            let first = &text[tokens[i].0..tokens[i].1];
            let single = j == i + 1;
            if let Some(kind) = classify(&digits, single.then_some(first)) {
                self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
                // Keep the last token's trailing punctuation ("…1111." ends a sentence).
                let last = &text[tokens[j - 1].0..tokens[j - 1].1];
                let core = last.trim_end_matches(TRAILING);
                let tail = &last[core.len()..];
                out.push_str(&text[copied..tokens[i].0]);
                out.push_str(kind.placeholder());
                out.push_str(tail);
                copied = tokens[j - 1].1;
            }
            i = j;
        }
        out.push_str(&text[copied..]);
        out
    }
}

const DIGIT_WORDS: [(&str, char); 11] = [
    ("zero", '0'),
    ("oh", '0'),
    ("one", '1'),
    ("two", '2'),
    ("three", '3'),
    ("four", '4'),
    ("five", '5'),
    ("six", '6'),
    ("seven", '7'),
    ("eight", '8'),
    ("nine", '9'),
];

/// The digits a token stands for, if it is part of a spoken or written number.
fn number_token(token: &str) -> Option<String> {
    let t = token.trim_matches(|c: char| TRAILING.contains(&c) || c == '"');
    if t.is_empty() {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    if let Some((_, d)) = DIGIT_WORDS.iter().find(|(w, _)| *w == lower) {
        return Some(d.to_string());
    }
    let numeric = t.chars().any(|c| c.is_ascii_digit())
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | ',' | '(' | ')' | '/' | '+'));
    numeric.then(|| t.chars().filter(char::is_ascii_digit).collect())
}

fn classify(digits: &str, single: Option<&str>) -> Option<Kind> {
    let n = digits.len();
    if (13..=19).contains(&n) && luhn(digits) {
        return Some(Kind::Card);
    }
    if let Some(token) = single {
        let t = token.trim_end_matches(TRAILING);
        if shape(t) == "ddd-dd-dddd" {
            return Some(Kind::NationalId);
        }
        // An amount or a date written as one token is not a phone number.
        let s = shape(t);
        if t.contains(',') || t.contains('.') || s == "dddd-dd-dd" || s == "dd/dd/dddd" {
            return None;
        }
    }
    (7..=15).contains(&n).then_some(Kind::Phone)
}

/// `d` for every digit, other characters as they are.
fn shape(t: &str) -> String {
    t.chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect()
}

/// The Luhn checksum of payment card numbers.
fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(&[r"\bACC-\d{6}\b".to_owned()]).unwrap()
    }

    #[test]
    fn cards_written_and_spoken() {
        let r = r();
        assert_eq!(
            r.redact("My card is 4111 1111 1111 1111."),
            "My card is [REDACTED_CARD]."
        );
        assert_eq!(
            r.redact("use 4111-1111-1111-1111 please"),
            "use [REDACTED_CARD] please"
        );
        let spoken = "it is four one one one one one one one one one one one one one one one ok";
        assert_eq!(r.redact(spoken), "it is [REDACTED_CARD] ok");
        // Sixteen digits failing Luhn are not a card (nor a phone: too long).
        assert_eq!(
            r.redact("ref 4111 1111 1111 1112"),
            "ref 4111 1111 1111 1112"
        );
        assert_eq!(r.counts()[0], (Kind::Card, 3));
    }

    #[test]
    fn ids_phones_and_what_is_left_alone() {
        let r = r();
        assert_eq!(
            r.redact("SSN 123-45-6789, thanks"),
            "SSN [REDACTED_ID], thanks"
        );
        assert_eq!(
            r.redact("call me at 555-867-5309 tomorrow"),
            "call me at [REDACTED_PHONE] tomorrow"
        );
        assert_eq!(
            r.redact("five five five one two one two"),
            "[REDACTED_PHONE]"
        );
        let kept = "I paid 1,250.00 on 2026-11-29 for order 456 at 10:30, one or two items";
        assert_eq!(r.redact(kept), kept);
        assert_eq!(
            r.redact("account ACC-123456 closed"),
            "account [REDACTED] closed"
        );
        assert_eq!(r.redact(""), "");
    }

    #[test]
    fn bad_pattern_is_reported() {
        let e = Redactor::new(&["(".to_owned()]).unwrap_err();
        assert!(e.contains("pattern"), "{e}");
    }

    #[test]
    fn luhn_vectors() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("79927398713"));
        assert!(!luhn("79927398710"));
    }
}
