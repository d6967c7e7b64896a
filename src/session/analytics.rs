//! Text analytics of final transcripts, without any cloud service: keyword hits from a
//! configured list, a lexicon-based sentiment score per utterance, the per-speaker trend, and
//! an alert on a run of strongly negative utterances. Sans-IO: text in, figures out.

use std::collections::HashMap;

use serde::Serialize;

/// Words that carry sentiment in contact-center speech, with a weight in −3..3.
const LEXICON: &[(&str, f64)] = &[
    ("thank", 2.0),
    ("thanks", 2.0),
    ("great", 3.0),
    ("good", 2.0),
    ("excellent", 3.0),
    ("perfect", 3.0),
    ("wonderful", 3.0),
    ("happy", 2.5),
    ("glad", 2.0),
    ("appreciate", 2.5),
    ("helpful", 2.0),
    ("love", 3.0),
    ("pleased", 2.0),
    ("awesome", 3.0),
    ("fantastic", 3.0),
    ("resolved", 1.5),
    ("fixed", 1.5),
    ("works", 1.0),
    ("nice", 2.0),
    ("easy", 1.5),
    ("satisfied", 2.0),
    ("welcome", 1.5),
    ("fine", 1.0),
    ("sure", 0.5),
    ("right", 0.5),
    ("bad", -2.5),
    ("terrible", -3.0),
    ("awful", -3.0),
    ("horrible", -3.0),
    ("angry", -3.0),
    ("upset", -2.5),
    ("frustrated", -2.5),
    ("frustrating", -2.5),
    ("disappointed", -2.5),
    ("unhappy", -2.5),
    ("hate", -3.0),
    ("worst", -3.0),
    ("problem", -1.5),
    ("issue", -1.0),
    ("broken", -2.0),
    ("wrong", -2.0),
    ("cancel", -1.5),
    ("refund", -1.0),
    ("complaint", -2.0),
    ("ridiculous", -3.0),
    ("unacceptable", -3.0),
    ("waiting", -1.0),
    ("never", -1.0),
    ("charged", -1.0),
    ("declined", -1.5),
    ("leaking", -1.5),
    ("late", -1.5),
    ("lost", -2.0),
    ("missing", -1.5),
    ("useless", -3.0),
    ("annoyed", -2.5),
    ("rude", -3.0),
    ("slow", -1.5),
    ("damaged", -2.0),
    ("failed", -2.0),
    ("error", -1.5),
    ("sorry", -0.5),
    ("cannot", -1.0),
];
const NEGATORS: &[&str] = &[
    "not", "no", "never", "dont", "didnt", "cant", "isnt", "wasnt", "wont", "doesnt", "nothing",
];
const BOOSTERS: &[&str] = &["very", "really", "so", "extremely", "totally", "absolutely"];
/// Utterances in a row below `ALERT_SCORE` that raise a `sentiment_alert`.
const ALERT_STREAK: u32 = 2;
const ALERT_SCORE: f64 = -0.4;
/// Scores kept per speaker for the trend.
const TREND_LEN: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sentiment {
    /// −1 (negative) … 1 (positive).
    pub score: f64,
    pub label: &'static str,
    /// How much of the utterance the lexicon recognised (0..1).
    pub confidence: f64,
}

/// Lower-case words without punctuation ("Don't!" → "dont"): how transcripts are compared.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The sentiment of one utterance: lexicon weights, flipped after a negation ("not happy"),
/// raised after a booster ("very happy"), squashed into −1..1 (x / √(x² + 15), as VADER).
pub fn sentiment(text: &str) -> Sentiment {
    let w = words(text);
    let (mut sum, mut hits) = (0.0, 0);
    for (i, word) in w.iter().enumerate() {
        let Some(&(_, weight)) = LEXICON.iter().find(|(l, _)| l == word) else {
            continue;
        };
        hits += 1;
        let before = &w[i.saturating_sub(3)..i];
        let mut v = weight;
        if before.iter().any(|b| NEGATORS.contains(&b.as_str())) {
            v *= -0.75;
        }
        if i > 0 && BOOSTERS.contains(&w[i - 1].as_str()) {
            v *= 1.5;
        }
        sum += v;
    }
    let score = if sum == 0.0 {
        0.0
    } else {
        sum / (sum * sum + 15.0).sqrt()
    };
    let label = match score {
        s if s >= 0.05 => "positive",
        s if s <= -0.05 => "negative",
        _ => "neutral",
    };
    let confidence = match w.len() {
        0 => 0.0,
        n => (hits as f64 * 4.0 / n as f64).min(1.0),
    };
    Sentiment {
        score: (score * 1000.0).round() / 1000.0,
        label,
        confidence: (confidence * 1000.0).round() / 1000.0,
    }
}

#[derive(Debug, Default)]
struct SpeakerState {
    scores: Vec<f64>,
    negative_run: u32,
}

/// What one final utterance produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub sentiment: Sentiment,
    pub keywords: Vec<String>,
    /// A strongly negative run just reached `ALERT_STREAK` utterances for this speaker.
    pub alert: Option<f64>,
}

/// One call's text analytics.
#[derive(Debug, Default)]
pub struct TextAnalytics {
    /// Configured keywords (phrases allowed), each as lower-case words.
    keywords: Vec<(String, Vec<String>)>,
    speakers: HashMap<String, SpeakerState>,
    /// Keywords heard so far, in order of first hit.
    heard: Vec<String>,
}

impl TextAnalytics {
    pub fn new(keywords: &[String]) -> TextAnalytics {
        TextAnalytics {
            keywords: keywords
                .iter()
                .map(|k| (k.trim().to_lowercase(), words(k)))
                .filter(|(_, w)| !w.is_empty())
                .collect(),
            ..TextAnalytics::default()
        }
    }

    /// Analyses a final utterance of `speaker`.
    pub fn on_final(&mut self, speaker: &str, text: &str) -> Analysis {
        let s = sentiment(text);
        let w = words(text);
        let keywords: Vec<String> = self
            .keywords
            .iter()
            .filter(|(_, k)| w.windows(k.len()).any(|win| win == k.as_slice()))
            .map(|(name, _)| name.clone())
            .collect();
        for k in &keywords {
            if !self.heard.contains(k) {
                self.heard.push(k.clone());
            }
        }
        let state = self.speakers.entry(speaker.to_owned()).or_default();
        state.scores.push(s.score);
        if state.scores.len() > TREND_LEN {
            state.scores.remove(0);
        }
        state.negative_run = if s.score <= ALERT_SCORE {
            state.negative_run + 1
        } else {
            0
        };
        let alert = (state.negative_run == ALERT_STREAK).then(|| {
            let recent = &state.scores[state.scores.len() - ALERT_STREAK as usize..];
            recent.iter().sum::<f64>() / recent.len() as f64
        });
        Analysis {
            sentiment: s,
            keywords,
            alert,
        }
    }

    /// The spec's `sentiment_trend`: per speaker, the mean of its recent utterances.
    pub fn trend(&self) -> serde_json::Value {
        let mut v: Vec<serde_json::Value> = self
            .speakers
            .iter()
            .filter(|(_, s)| !s.scores.is_empty())
            .map(|(speaker, s)| {
                let mean = s.scores.iter().sum::<f64>() / s.scores.len() as f64;
                let label = match mean {
                    m if m >= 0.05 => "positive",
                    m if m <= -0.05 => "negative",
                    _ => "neutral",
                };
                serde_json::json!({
                    "speaker": speaker,
                    "label": label,
                    "score": (mean * 1000.0).round() / 1000.0,
                    "utterances": s.scores.len(),
                })
            })
            .collect();
        v.sort_by(|a, b| a["speaker"].as_str().cmp(&b["speaker"].as_str()));
        serde_json::Value::Array(v)
    }

    pub fn keywords_heard(&self) -> &[String] {
        &self.heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_negation_and_boosters() {
        assert_eq!(
            sentiment("Thank you, that was very helpful!").label,
            "positive"
        );
        assert_eq!(
            sentiment("This is terrible, I am really frustrated.").label,
            "negative"
        );
        assert_eq!(sentiment("I am not happy with this").label, "negative");
        assert_eq!(sentiment("The meeting is on Tuesday").label, "neutral");
        assert!(sentiment("very good").score > sentiment("good").score);
        assert_eq!(sentiment("").score, 0.0);
    }

    #[test]
    fn keywords_whole_words_and_phrases() {
        let mut a = TextAnalytics::new(&["refund".into(), "cancel my subscription".into()]);
        let r = a.on_final("Bob", "I want a Refund. Please cancel my subscription.");
        assert_eq!(r.keywords, ["refund", "cancel my subscription"]);
        assert!(a
            .on_final("Bob", "refunds are processed")
            .keywords
            .is_empty());
        assert_eq!(a.keywords_heard(), ["refund", "cancel my subscription"]);
    }

    /// Two strongly negative utterances in a row from one speaker raise one alert; the other
    /// speaker's utterances don't break or count toward the run.
    #[test]
    fn alert_on_a_negative_run() {
        let mut a = TextAnalytics::new(&[]);
        assert!(a
            .on_final("Bob", "This is terrible and useless")
            .alert
            .is_none());
        assert!(a
            .on_final("Alice", "Thank you, that is great")
            .alert
            .is_none());
        let alert = a.on_final("Bob", "I am angry, this is unacceptable").alert;
        assert!(alert.is_some_and(|s| s < -0.4), "{alert:?}");
        assert!(a
            .on_final("Bob", "the worst, horrible service")
            .alert
            .is_none());
        let trend = a.trend();
        assert_eq!(trend[0]["speaker"], "Alice");
        assert_eq!(trend[1]["label"], "negative");
    }
}
