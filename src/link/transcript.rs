//! Turns the RTVI messages an agent sends into transcript lines: one line
//! per sentence the bot spoke and per final user transcription, however
//! many message types the agent reports them under.
//!
//! Sans-I/O: messages and the time they arrived go in, lines come out.
//!
//! What Pipecat 1.14 sends (`processors/frameworks/rtvi/observer.py`,
//! `RTVIObserver`), with its default settings and a 2.x client:
//! - for every transcription, interim ones included, a `user-input`
//!   (`_send_user_input`) and then a `user-transcription`
//!   (`_handle_user_transcriptions`) with the same `text`, `timestamp` and
//!   `final`;
//! - for each sentence of the LLM's reply, as it is generated, a
//!   `bot-transcription` (`_handle_llm_text_frame`, on `match_endofsentence`);
//! - as the bot speaks (`_send_aggregated_llm_text`,
//!   `_handle_aggregated_progress`): a `bot-output` `spoken_status: "new"`
//!   just before a sentence's audio, then with a TTS that has word
//!   timestamps one `bot-tts-text` per word, each followed by a `bot-output`
//!   `"in-progress"` (`"completed"` for the last word); with a TTS without
//!   them, after the audio, a `bot-output` `"completed"` and a `bot-tts-text`
//!   with the whole sentence;
//! - when the user barges in, `bot-interrupted`, and nothing more about the
//!   sentence being spoken.
//!
//! So the bot's text comes from one source per call, the best the agent
//! sends: `bot-output` over `bot-tts-text` (what was spoken, but a word at a
//! time with some TTS) over `bot-transcription` (what the LLM wrote, spoken
//! or not). A better source showing up later replaces a worse one from then
//! on; lines from the worse ones are held until the bot's turn ends, so
//! the better one can still take over without a line being stored twice.
//! The user's lines likewise come from the first of `user-input` and
//! `user-transcription` the agent sends.

use std::collections::VecDeque;

use jiff::Timestamp;
use serde::Serialize;

use super::rtvi::{BotMessage, BotOutput, BotTextKind, SpokenStatus};

/// Who said a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The visitor.
    User,
    /// The agent.
    Bot,
}

impl Speaker {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Bot => "bot",
        }
    }
}

/// A line to store.
#[derive(Clone, Debug, PartialEq)]
pub struct TranscriptLine {
    /// Who said it.
    pub role: Speaker,
    /// What was said.
    pub text: String,
    /// Always true for user lines (interim transcriptions are never lines).
    /// False for a bot sentence cut off by an interruption (or the end of
    /// the call): its text is what was spoken of it when the agent reports
    /// word progress, else the whole sentence it was saying.
    pub is_final: bool,
    /// User lines: the message's `timestamp` when it parses (and is within
    /// a day of arrival), else `received_at`. Bot lines: when the first
    /// message about the sentence arrived (Pipecat sends `bot-output`
    /// `"new"` just before the sentence's audio).
    pub spoken_at: Timestamp,
    /// When the message completing the line arrived.
    pub received_at: Timestamp,
    /// Only when the agent sends one; Pipecat never does.
    pub confidence: Option<f64>,
}

/// Where the bot's lines come from, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BotSource {
    Transcription,
    TtsText,
    Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UserSource {
    Input,
    Transcription,
}

/// A `bot-output` segment being spoken.
#[derive(Debug)]
struct Segment {
    id: Option<u64>,
    text: String,
    /// What has been spoken of it, when the agent says.
    spoken: Option<String>,
    opened_at: Timestamp,
}

/// A line waiting for the end of the bot's turn.
#[derive(Debug)]
struct Held {
    text: String,
    spoken_at: Timestamp,
    received_at: Timestamp,
}

/// Joins words (`bot-tts-text`, or 1.x `bot-output` words) into sentences.
#[derive(Debug, Default)]
struct Words {
    text: String,
    started_at: Option<Timestamp>,
}

/// Open segments kept at most; an agent that never completes them must not
/// grow this without bound.
const MAX_OPEN_SEGMENTS: usize = 32;
/// Finished segment ids remembered, so a repeated message is not a new line.
const MAX_CLOSED_SEGMENTS: usize = 64;
/// A `timestamp` further than this from the arrival time is not believed.
const MAX_CLOCK_SKEW_S: i64 = 86_400;

/// Turns one call's RTVI messages into transcript lines; see the module
/// documentation for the rules.
#[derive(Debug, Default)]
pub struct TranscriptAssembler {
    user_source: Option<UserSource>,
    partial: Option<String>,
    bot_source: Option<BotSource>,
    /// `bot-output` segments announced or in progress, oldest first.
    open: VecDeque<Segment>,
    closed: VecDeque<u64>,
    /// 1.x word-level `bot-output` with no segment to attach to.
    output_words: Words,
    /// `bot-transcription` or `bot-tts-text` lines, until the turn ends.
    held: Vec<Held>,
    tts_words: Words,
}

impl TranscriptAssembler {
    /// An assembler with nothing heard yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The user's words so far when the agent sends interim transcriptions:
    /// for the status page, never stored. Cleared by the final one.
    pub fn partial(&self) -> Option<&str> {
        self.partial.as_deref()
    }

    /// Feeds one message, received at `now`; returns the lines it completes,
    /// in the order they were said.
    pub fn push(&mut self, message: &BotMessage, now: Timestamp) -> Vec<TranscriptLine> {
        match message {
            BotMessage::UserTranscription {
                text,
                is_final,
                timestamp,
                confidence,
                ..
            } => self.user(
                UserSource::Transcription,
                text,
                *is_final,
                timestamp.as_deref(),
                *confidence,
                now,
            ),
            BotMessage::UserInput {
                text,
                is_final,
                timestamp,
                confidence,
                ..
            } => self.user(
                UserSource::Input,
                text,
                *is_final,
                timestamp.as_deref(),
                *confidence,
                now,
            ),
            BotMessage::UserStartedSpeaking | BotMessage::BotStoppedSpeaking => {
                self.end_bot_turn(false, now)
            }
            BotMessage::BotInterrupted => {
                let mut lines = self.cut_segments(now);
                lines.extend(self.end_bot_turn(true, now));
                lines
            }
            BotMessage::BotText {
                kind: BotTextKind::BotTranscription,
                text,
            } => {
                if self.use_bot_source(BotSource::Transcription) {
                    hold(&mut self.held, text, now, now);
                }
                Vec::new()
            }
            BotMessage::BotText {
                kind: BotTextKind::BotTtsText,
                text,
            } => {
                if self.use_bot_source(BotSource::TtsText)
                    && let Some((sentence, started_at)) = self.tts_words.add(text, now)
                {
                    hold(&mut self.held, &sentence, started_at, now);
                }
                Vec::new()
            }
            BotMessage::BotText {
                kind: BotTextKind::BotOutput,
                text,
            } => self.bot_output(&BotOutput::spoken_sentence(text.clone()), now),
            BotMessage::BotOutput(output) => self.bot_output(output, now),
            _ => Vec::new(),
        }
    }

    /// The call has ended: whatever was held or being spoken, as lines.
    pub fn finish(&mut self, now: Timestamp) -> Vec<TranscriptLine> {
        self.partial = None;
        let mut lines = self.cut_segments(now);
        lines.extend(self.end_bot_turn(true, now));
        lines
    }

    fn user(
        &mut self,
        source: UserSource,
        text: &str,
        is_final: bool,
        timestamp: Option<&str>,
        confidence: Option<f64>,
        now: Timestamp,
    ) -> Vec<TranscriptLine> {
        // Pipecat sends each transcription twice, as user-input and then
        // user-transcription: the first kind the agent sends is used.
        if *self.user_source.get_or_insert(source) != source {
            return Vec::new();
        }
        let text = text.trim();
        if !is_final {
            self.partial = (!text.is_empty()).then(|| text.to_owned());
            return Vec::new();
        }
        self.partial = None;
        // Bot lines held from the turn before come first.
        let mut lines = self.end_bot_turn(false, now);
        if !text.is_empty() {
            lines.push(TranscriptLine {
                role: Speaker::User,
                text: text.to_owned(),
                is_final: true,
                spoken_at: timestamp
                    .and_then(|t| parse_timestamp(t, now))
                    .unwrap_or(now),
                received_at: now,
                confidence,
            });
        }
        lines
    }

    /// Whether a message from `source` is to be used; a better source than
    /// the one in use replaces it, dropping what the worse one held.
    fn use_bot_source(&mut self, source: BotSource) -> bool {
        match self.bot_source {
            Some(current) if current > source => false,
            Some(current) if current == source => true,
            _ => {
                self.bot_source = Some(source);
                self.held.clear();
                self.tts_words = Words::default();
                true
            }
        }
    }

    fn bot_output(&mut self, o: &BotOutput, now: Timestamp) -> Vec<TranscriptLine> {
        let fragment = matches!(o.output_type.as_deref(), Some("word" | "token"));
        let status = match (o.spoken_status, o.spoken) {
            (Some(status), _) => status,
            // 1.x: `spoken: false` before the audio, `true` after it.
            (None, Some(false)) => SpokenStatus::New,
            (None, Some(true)) => SpokenStatus::Completed,
            // An agent that says nothing about speech: take the text as
            // spoken when it comes.
            (None, None) => SpokenStatus::Completed,
        };
        if status == SpokenStatus::New && o.will_be_spoken == Some(false) {
            // Shown, never spoken (Pipecat: text the TTS skips). It does not
            // make bot-output the source: a text-only agent's words are
            // then still taken from bot-transcription.
            return Vec::new();
        }
        self.use_bot_source(BotSource::Output);
        if fragment {
            return match status {
                SpokenStatus::New => Vec::new(),
                _ => self.spoken_word(&o.text, now),
            };
        }
        if o.segment_id.is_some_and(|id| self.closed.contains(&id)) {
            return Vec::new();
        }
        match status {
            SpokenStatus::New => {
                self.open_segment(o, now);
                Vec::new()
            }
            SpokenStatus::InProgress => {
                let remaining = o
                    .spoken_progress
                    .as_ref()
                    .map(|p| p.remaining_text.trim().is_empty());
                if remaining == Some(true) {
                    return self.complete(o, now);
                }
                let i = self.open_segment(o, now);
                if let Some(p) = &o.spoken_progress {
                    self.open[i].spoken = Some(p.accumulated_text.clone());
                }
                Vec::new()
            }
            SpokenStatus::Completed => self.complete(o, now),
        }
    }

    /// The index of `o`'s open segment, opening it if needed.
    fn open_segment(&mut self, o: &BotOutput, now: Timestamp) -> usize {
        if let Some(i) = self.find_open(o) {
            return i;
        }
        if self.open.len() == MAX_OPEN_SEGMENTS {
            self.open.pop_front();
        }
        self.open.push_back(Segment {
            id: o.segment_id,
            text: o.text.clone(),
            spoken: None,
            opened_at: now,
        });
        self.open.len() - 1
    }

    fn find_open(&self, o: &BotOutput) -> Option<usize> {
        match o.segment_id {
            Some(id) => self.open.iter().position(|s| s.id == Some(id)),
            None => self
                .open
                .iter()
                .position(|s| s.id.is_none() && s.text == o.text),
        }
    }

    /// `o`'s segment has been spoken to its end. Segments opened before it
    /// and still open were cut off: the agent has moved on.
    fn complete(&mut self, o: &BotOutput, now: Timestamp) -> Vec<TranscriptLine> {
        let found = self.find_open(o);
        let stale = found.unwrap_or(self.open.len());
        let mut lines: Vec<_> = self
            .open
            .drain(..stale)
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|s| self.cut(s, now))
            .collect();
        let spoken_at = found
            .and_then(|_| self.open.pop_front())
            .map_or(now, |s| s.opened_at);
        if let Some(id) = o.segment_id {
            self.remember_closed(id);
        }
        // Its words, if a 1.x agent sent them too, were this sentence.
        self.output_words = Words::default();
        lines.extend(bot_line(&o.text, true, spoken_at, now));
        lines
    }

    /// A spoken word of a 1.x word-level `bot-output`: progress of the
    /// oldest open segment, or of a sentence of its own.
    fn spoken_word(&mut self, word: &str, now: Timestamp) -> Vec<TranscriptLine> {
        if let Some(segment) = self.open.front_mut() {
            let mut spoken = Words {
                text: segment.spoken.take().unwrap_or_default(),
                started_at: None,
            };
            spoken.append(word);
            let done = covers(&spoken.text, &segment.text);
            segment.spoken = Some(spoken.text);
            if done {
                let s = self.open.pop_front().expect("just seen");
                if let Some(id) = s.id {
                    self.remember_closed(id);
                }
                return bot_line(&s.text, true, s.opened_at, now)
                    .into_iter()
                    .collect();
            }
            return Vec::new();
        }
        match self.output_words.add(word, now) {
            Some((sentence, started_at)) => bot_line(&sentence, true, started_at, now)
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }

    /// The bot stopped speaking (interrupted, or the call ended): every open
    /// segment is cut off where it was.
    fn cut_segments(&mut self, now: Timestamp) -> Vec<TranscriptLine> {
        let open: Vec<_> = self.open.drain(..).collect();
        let mut lines: Vec<_> = open.into_iter().filter_map(|s| self.cut(s, now)).collect();
        if let Some((text, started_at)) = self.output_words.take() {
            lines.extend(bot_line(&text, false, started_at, now));
        }
        lines
    }

    fn cut(&mut self, s: Segment, now: Timestamp) -> Option<TranscriptLine> {
        if let Some(id) = s.id {
            self.remember_closed(id);
        }
        let spoken = s.spoken.filter(|t| !t.trim().is_empty());
        bot_line(
            spoken.as_deref().unwrap_or(&s.text),
            false,
            s.opened_at,
            now,
        )
    }

    fn remember_closed(&mut self, id: u64) {
        if self.closed.len() == MAX_CLOSED_SEGMENTS {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    /// The bot's turn is over (or the user's has begun): held lines are
    /// final now. `cut`: the bot was interrupted, so words without the end
    /// of their sentence were cut off.
    fn end_bot_turn(&mut self, cut: bool, now: Timestamp) -> Vec<TranscriptLine> {
        let mut lines: Vec<_> = self
            .held
            .drain(..)
            .filter_map(|h| bot_line(&h.text, true, h.spoken_at, h.received_at))
            .collect();
        if let Some((text, started_at)) = self.tts_words.take() {
            lines.extend(bot_line(&text, !cut, started_at, now));
        }
        lines
    }
}

fn hold(held: &mut Vec<Held>, text: &str, spoken_at: Timestamp, received_at: Timestamp) {
    if !text.trim().is_empty() {
        held.push(Held {
            text: text.trim().to_owned(),
            spoken_at,
            received_at,
        });
    }
}

fn bot_line(
    text: &str,
    is_final: bool,
    spoken_at: Timestamp,
    received_at: Timestamp,
) -> Option<TranscriptLine> {
    let text = text.trim();
    (!text.is_empty()).then(|| TranscriptLine {
        role: Speaker::Bot,
        text: text.to_owned(),
        is_final,
        spoken_at,
        received_at,
        confidence: None,
    })
}

impl Words {
    /// Appends a word; returns the sentence when it has ended, with when
    /// its first word came.
    fn add(&mut self, word: &str, now: Timestamp) -> Option<(String, Timestamp)> {
        if word.trim().is_empty() {
            // Only spacing: kept, it separates the next word.
            self.text.push_str(word);
            return None;
        }
        self.started_at.get_or_insert(now);
        self.append(word);
        if ends_sentence(&self.text) {
            self.take()
        } else {
            None
        }
    }

    /// Words come with their spacing (`" world"`) or without (`"world"`).
    fn append(&mut self, word: &str) {
        let glued = self.text.is_empty()
            || self.text.ends_with(char::is_whitespace)
            || word.starts_with(char::is_whitespace)
            || word.starts_with([',', '.', '!', '?', ';', ':', ')', ']', '}', '…']);
        if !glued {
            self.text.push(' ');
        }
        self.text.push_str(word);
    }

    fn take(&mut self) -> Option<(String, Timestamp)> {
        let words = std::mem::take(self);
        let text = words.text.trim();
        match words.started_at {
            Some(at) if !text.is_empty() => Some((text.to_owned(), at)),
            _ => None,
        }
    }
}

/// Whether text ends a sentence: `.`, `!`, `?`, `…` (or their CJK forms),
/// maybe followed by closing quotes or brackets.
fn ends_sentence(text: &str) -> bool {
    let closing = ['"', '\'', '”', '’', ')', ']', '»'];
    text.trim_end()
        .trim_end_matches(closing)
        .ends_with(['.', '!', '?', '…', '。', '！', '？'])
}

/// Whether the words spoken so far make up all of `sentence` (spacing and
/// punctuation aside).
fn covers(spoken: &str, sentence: &str) -> bool {
    let letters = |s: &str| s.chars().filter(|c| c.is_alphanumeric()).count();
    letters(spoken) >= letters(sentence)
}

/// RTVI's `timestamp`: RFC 3339 (Pipecat: `datetime.isoformat` with
/// milliseconds, `2026-03-02T10:00:01.250+00:00`); without an offset it is
/// taken as UTC. A time more than a day from `now` is not believed.
pub fn parse_timestamp(s: &str, now: Timestamp) -> Option<Timestamp> {
    let t = s.parse::<Timestamp>().ok().or_else(|| {
        let civil = s.parse::<jiff::civil::DateTime>().ok()?;
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    })?;
    ((t.as_second() - now.as_second()).abs() <= MAX_CLOCK_SKEW_S).then_some(t)
}

#[cfg(test)]
mod tests;
