use std::path::{Path, PathBuf};

use super::*;
use crate::link::rtvi::{self, Inbound, SpokenProgress};

fn t0() -> Timestamp {
    "2026-03-02T10:00:00Z".parse().unwrap()
}

fn at(ms: i64) -> Timestamp {
    t0() + jiff::SignedDuration::from_millis(ms)
}

fn fixture_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/rtvi")
        .join(sub)
}

/// What a message sequence made.
#[derive(Debug, Default)]
struct Replay {
    lines: Vec<TranscriptLine>,
    /// Each different partial shown, in order.
    partials: Vec<String>,
    /// Messages that were not bot messages (malformed, unknown, signalling).
    not_bot: usize,
}

impl Replay {
    fn texts(&self) -> Vec<(Speaker, &str, bool)> {
        self.lines
            .iter()
            .map(|l| (l.role, l.text.as_str(), l.is_final))
            .collect()
    }

    fn count(&self, role: Speaker) -> usize {
        self.lines.iter().filter(|l| l.role == role).count()
    }
}

/// Feeds a `.jsonl` sequence (one wire message per line; blank lines and
/// lines starting with `#` skipped) as it would arrive, message `i` at
/// `i * 100` ms, then ends the call.
fn replay(text: &str) -> Replay {
    let mut assembler = TranscriptAssembler::new();
    let mut out = Replay::default();
    let mut i = 0;
    for raw in text.lines().map(str::trim) {
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        i += 1;
        match rtvi::parse(raw.as_bytes()) {
            Inbound::Bot(message) => {
                out.lines.extend(assembler.push(&message, at(i * 100)));
                if let Some(p) = assembler.partial()
                    && out.partials.last().map(String::as_str) != Some(p)
                {
                    out.partials.push(p.to_owned());
                }
            }
            _ => out.not_bot += 1,
        }
    }
    out.lines.extend(assembler.finish(at((i + 1) * 100)));
    assert_eq!(assembler.partial(), None, "finish clears the partial");
    out
}

fn replay_file(path: &Path) -> Replay {
    replay(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
}

use Speaker::{Bot, User};

// Sequences recorded from Pipecat 1.14's own RTVIObserver by
// fixtures/rtvi/pipecat_sequences.py (fake TTS services, a 2.0.0 client).

#[test]
fn generated_conversations_store_each_sentence_once_whatever_the_agent_sends() {
    let expected = [
        (User, "Hi, is anyone there?", true),
        (Bot, "Hello there.", true),
        (Bot, "How can I help you today?", true),
        (User, "When do you open?", true),
        (Bot, "We open at nine.", true),
    ];
    let dir = fixture_dir("generated-1.14");
    let mut seen = 0;
    for tts in ["sentence-tts", "word-tts"] {
        // Defaults send bot-output, bot-transcription and bot-tts-text for
        // every sentence, and user-input and user-transcription for every
        // transcription; the variants leave bot-output (and more) out.
        for variant in [
            "",
            "-no-bot-output",
            "-tts-text-only",
            "-transcription-only",
        ] {
            let name = format!("conversation-{tts}{variant}.jsonl");
            let r = replay_file(&dir.join(&name));
            assert_eq!(r.texts(), expected, "{name}");
            assert_eq!(r.partials, ["Hi", "Hi is anyone", "When do"], "{name}");
            let user_spoken: Vec<_> = r
                .lines
                .iter()
                .filter(|l| l.role == User)
                .map(|l| l.spoken_at.to_string())
                .collect();
            assert_eq!(
                user_spoken,
                ["2026-03-02T10:00:01.25Z", "2026-03-02T10:00:01.25Z"],
                "{name}: spoken_at from the message's timestamp"
            );
            assert!(r.lines.iter().all(|l| l.confidence.is_none()), "{name}");
            seen += 1;
        }
    }
    assert_eq!(seen, 8);
}

#[test]
fn generated_default_bot_lines_are_timed_from_their_first_message() {
    // turn: bot-output "new" arrives just before the sentence's audio,
    // "completed" after it.
    let text = std::fs::read_to_string(
        fixture_dir("generated-1.14").join("conversation-sentence-tts.jsonl"),
    )
    .unwrap();
    let r = replay(&text);
    let hello = &r.lines[1];
    assert_eq!(hello.text, "Hello there.");
    let index = |needle: &str| {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .position(|l| l.contains(needle))
            .unwrap() as i64
            + 1
    };
    assert_eq!(
        hello.spoken_at,
        at(100 * index(r#""spoken_status": "new""#))
    );
    assert_eq!(
        hello.received_at,
        at(100 * index(r#""spoken_status": "completed""#))
    );
}

#[test]
fn generated_interruptions_keep_what_was_being_said_as_not_final() {
    let dir = fixture_dir("generated-1.14");
    // Without word timestamps Pipecat says nothing of how far it got: the
    // sentence it was saying is kept, not final.
    let r = replay_file(&dir.join("interrupted-sentence-tts.jsonl"));
    assert_eq!(
        r.texts(),
        [(
            Bot,
            "Our opening hours are nine to five, Monday to Friday.",
            false
        )]
    );
    // With them, what it had said.
    let r = replay_file(&dir.join("interrupted-word-tts.jsonl"));
    assert_eq!(r.texts(), [(Bot, "Our opening hours are nine", false)]);
}

// Hand-written sequences, each citing the Pipecat source it follows.

#[test]
fn legacy_word_level_bot_output_makes_one_line_per_sentence() {
    let r = replay_file(&fixture_dir("sequences").join("legacy-word-output.jsonl"));
    assert_eq!(
        r.texts(),
        [
            (User, "hello", true),
            (Bot, "Hello there.", true),
            (Bot, "We open", false),
            (User, "thanks", true),
        ]
    );
}

#[test]
fn minimal_agent_confidence_and_timestamps() {
    let r = replay_file(&fixture_dir("sequences").join("minimal-agent.jsonl"));
    assert_eq!(
        r.texts(),
        [
            (User, "Where is the lift?", true),
            (Bot, "The lift is behind you.", true),
            (Bot, "On the left.", true),
            (User, "Thanks", true),
            (User, "Bye", true),
        ]
    );
    assert_eq!(r.partials, ["where is the lift"]);
    let conf: Vec<_> = r.lines.iter().map(|l| l.confidence).collect();
    assert_eq!(
        conf,
        [Some(0.91), None, None, None, None],
        "out of range or not a number: none"
    );
    let spoken: Vec<_> = r.lines.iter().map(|l| l.spoken_at.to_string()).collect();
    assert_eq!(spoken[0], "2026-03-02T10:00:02.5Z");
    assert_eq!(spoken[3], "2026-03-02T10:00:06.125Z", "no offset: UTC");
    assert_eq!(r.lines[4].spoken_at, at(600), "junk: the arrival time");
    assert_eq!(r.lines[1].spoken_at, r.lines[1].received_at);
}

#[test]
fn tts_text_words_are_joined_into_sentences() {
    let r = replay_file(&fixture_dir("sequences").join("tts-text-words.jsonl"));
    assert_eq!(
        r.texts(),
        [
            (User, "Any coffee here?", true),
            (Bot, "Yes, on the second floor.", true),
            (Bot, "Follow the signs", false),
        ]
    );
    assert_eq!(r.partials, ["Any coffee"]);
}

#[test]
fn unspoken_duplicate_and_malformed_messages_make_no_lines() {
    let r = replay_file(&fixture_dir("sequences").join("unspoken-duplicate-malformed.jsonl"));
    assert_eq!(
        r.texts(),
        [
            (User, "Show me the code", true),
            (User, "Mhm.", true),
            (Bot, "Here it is.", true),
        ]
    );
    assert_eq!(r.not_bot, 5, "llm-started, llm-text, three malformed");
}

/// Recordings from a real Pipecat 1.14 bot, one JSON message per line as
/// sent on the wire, in fixtures/rtvi/pipecat-1.14/ (filled on the
/// `interop` branch). Each must give one bot line per spoken segment and one
/// user line per final transcription, counted from the recording itself;
/// where `<name>.expected.json` (`{"user": N, "bot": N}`) is there, exactly
/// those counts.
#[test]
fn pipecat_1_14_recordings_store_one_line_per_sentence() {
    let dir = fixture_dir("pipecat-1.14");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no {dir:?} yet: nothing to check");
        return;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let r = replay(&text);
        let (user, bot) = expected_counts(&text);
        let expected_file = path.with_extension("expected.json");
        let (user, bot) = match std::fs::read_to_string(&expected_file) {
            Ok(s) => {
                let v: serde_json::Value = serde_json::from_str(&s).unwrap();
                let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")) as usize;
                (n("user"), n("bot"))
            }
            Err(_) => (user, bot),
        };
        println!(
            "{}: {} user, {} bot lines",
            path.display(),
            r.count(User),
            r.count(Bot)
        );
        assert_eq!(r.count(User), user, "{path:?} user lines: {:#?}", r.texts());
        assert_eq!(r.count(Bot), bot, "{path:?} bot lines: {:#?}", r.texts());
    }
}

/// Counts from a recording, independently of the assembler: final
/// transcriptions (of `user-input` if the agent sends it, else of
/// `user-transcription`) and spoken `bot-output` segments (else
/// `bot-transcription` sentences, else `bot-tts-text` sentence ends).
fn expected_counts(text: &str) -> (usize, usize) {
    let messages: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        messages
            .iter()
            .filter(|m| m["type"] == kind)
            .map(|m| &m["data"])
            .collect()
    };
    let nonempty =
        |d: &&serde_json::Value| d["text"].as_str().is_some_and(|t| !t.trim().is_empty());
    let user_kind = if of("user-input").is_empty() {
        "user-transcription"
    } else {
        "user-input"
    };
    let user = of(user_kind)
        .into_iter()
        .filter(|d| d["final"] == true)
        .filter(nonempty)
        .count();
    let outputs = of("bot-output");
    let transcriptions = of("bot-transcription");
    let tts = of("bot-tts-text");
    let bot = if outputs.is_empty() && transcriptions.is_empty() {
        // Words or sentences: count sentence ends, and words left over.
        let ends: Vec<bool> = tts
            .iter()
            .map(|d| d["text"].as_str().is_some_and(ends_sentence))
            .collect();
        let after_last = ends.iter().rposition(|e| *e).map_or(0, |i| i + 1);
        ends.iter().filter(|e| **e).count() + usize::from(tts[after_last..].iter().any(nonempty))
    } else if outputs.is_empty() {
        transcriptions.into_iter().filter(nonempty).count()
    } else {
        let mut segments: Vec<_> = outputs
            .into_iter()
            .filter(|d| d["will_be_spoken"] != false)
            .filter(nonempty)
            .map(|d| {
                d["segment_id"]
                    .as_u64()
                    .expect("2.x bot-output has segment_id")
            })
            .collect();
        segments.sort_unstable();
        segments.dedup();
        segments.len()
    };
    (user, bot)
}

// Rules one at a time.

fn output(text: &str, id: u64, status: SpokenStatus, spoken: &str) -> BotMessage {
    BotMessage::BotOutput(BotOutput {
        text: text.into(),
        output_type: Some("sentence".into()),
        segment_id: Some(id),
        spoken: None,
        will_be_spoken: Some(true),
        spoken_status: Some(status),
        spoken_progress: Some(SpokenProgress {
            accumulated_text: spoken.into(),
            remaining_text: text[spoken.len()..].into(),
        }),
    })
}

fn text(kind: BotTextKind, text: &str) -> BotMessage {
    BotMessage::BotText {
        kind,
        text: text.into(),
    }
}

fn feed(a: &mut TranscriptAssembler, messages: &[BotMessage]) -> Vec<(Speaker, String, bool)> {
    messages
        .iter()
        .enumerate()
        .flat_map(|(i, m)| a.push(m, at(i as i64 * 100)))
        .map(|l| (l.role, l.text, l.is_final))
        .collect()
}

#[test]
fn a_better_source_showing_up_later_takes_over_without_repeating() {
    let mut a = TranscriptAssembler::new();
    // First turn: only bot-transcription (say bot-output came on later).
    let first = feed(
        &mut a,
        &[
            text(BotTextKind::BotTranscription, "Welcome."),
            BotMessage::BotStartedSpeaking,
            BotMessage::BotStoppedSpeaking,
        ],
    );
    assert_eq!(first, [(Bot, "Welcome.".into(), true)]);
    // Then everything: bot-output wins, the others are dropped.
    let second = feed(
        &mut a,
        &[
            text(BotTextKind::BotTranscription, "Hi."),
            BotMessage::BotStartedSpeaking,
            output("Hi.", 1, SpokenStatus::New, ""),
            output("Hi.", 1, SpokenStatus::Completed, "Hi."),
            text(BotTextKind::BotTtsText, "Hi."),
            BotMessage::BotStoppedSpeaking,
            text(BotTextKind::BotTranscription, "Late."),
            BotMessage::BotStoppedSpeaking,
        ],
    );
    assert_eq!(second, [(Bot, "Hi.".into(), true)]);
    assert!(a.finish(at(10_000)).is_empty());
}

#[test]
fn legacy_lines_wait_for_the_end_of_the_turn() {
    let mut a = TranscriptAssembler::new();
    let lines = feed(
        &mut a,
        &[
            text(BotTextKind::BotTranscription, "One."),
            text(BotTextKind::BotTranscription, " Two."),
            BotMessage::BotStartedSpeaking,
        ],
    );
    assert!(lines.is_empty(), "held: bot-output may still come");
    let lines = a.push(
        &BotMessage::UserTranscription {
            text: "three".into(),
            is_final: true,
            timestamp: None,
            user_id: None,
            confidence: None,
        },
        at(500),
    );
    let texts: Vec<_> = lines.iter().map(|l| (l.role, l.text.as_str())).collect();
    assert_eq!(
        texts,
        [(Bot, "One."), (Bot, "Two."), (User, "three")],
        "held bot lines come before the user's that ends the turn"
    );
}

#[test]
fn progress_that_reaches_the_end_completes_the_segment() {
    // Pipecat marks "completed" only when remaining_text is exactly "";
    // a remaining space must not leave the sentence open.
    let mut a = TranscriptAssembler::new();
    let mut m = output("Done. ", 3, SpokenStatus::InProgress, "Done.");
    if let BotMessage::BotOutput(o) = &mut m {
        o.spoken_progress.as_mut().unwrap().remaining_text = " ".into();
    }
    assert_eq!(feed(&mut a, &[m]), [(Bot, "Done.".into(), true)]);
    assert!(a.finish(at(1000)).is_empty());
}

#[test]
fn a_later_segment_completing_cuts_older_open_ones() {
    let mut a = TranscriptAssembler::new();
    let lines = feed(
        &mut a,
        &[
            output("Never finished.", 1, SpokenStatus::New, ""),
            output("Never finished.", 1, SpokenStatus::InProgress, "Never"),
            output("Next one.", 2, SpokenStatus::New, ""),
            output("Next one.", 2, SpokenStatus::Completed, "Next one."),
            // Too late for segment 1.
            output(
                "Never finished.",
                1,
                SpokenStatus::Completed,
                "Never finished.",
            ),
        ],
    );
    assert_eq!(
        lines,
        [
            (Bot, "Never".into(), false),
            (Bot, "Next one.".into(), true)
        ]
    );
}

#[test]
fn open_segments_are_bounded() {
    let mut a = TranscriptAssembler::new();
    for id in 0..1000 {
        assert!(
            a.push(&output("x.", id, SpokenStatus::New, ""), at(0))
                .is_empty()
        );
    }
    assert_eq!(a.open.len(), MAX_OPEN_SEGMENTS);
    assert_eq!(a.finish(at(1)).len(), MAX_OPEN_SEGMENTS);
}

#[test]
fn interim_user_text_is_a_partial_only() {
    let mut a = TranscriptAssembler::new();
    let interim = |t: &str| BotMessage::UserInput {
        text: t.into(),
        input_type: "transcription".into(),
        is_final: false,
        timestamp: None,
        user_id: None,
        confidence: None,
    };
    assert!(a.push(&interim("open"), at(0)).is_empty());
    assert_eq!(a.partial(), Some("open"));
    assert!(a.push(&interim("  "), at(1)).is_empty());
    assert_eq!(a.partial(), None, "an empty interim clears it");
    assert!(a.push(&interim("opening hours"), at(2)).is_empty());
    let mut last = interim("Opening hours?");
    if let BotMessage::UserInput { is_final, .. } = &mut last {
        *is_final = true;
    }
    let lines = a.push(&last, at(3));
    assert_eq!(lines.len(), 1);
    assert_eq!(a.partial(), None);
}

#[test]
fn timestamps() {
    let now = t0();
    let p = |s| parse_timestamp(s, now).map(|t| t.to_string());
    assert_eq!(
        p("2026-03-02T10:00:01.250+00:00").as_deref(),
        Some("2026-03-02T10:00:01.25Z")
    );
    assert_eq!(
        p("2026-03-02T12:00:01+02:00").as_deref(),
        Some("2026-03-02T10:00:01Z")
    );
    assert_eq!(
        p("2026-03-02T09:59:59.5").as_deref(),
        Some("2026-03-02T09:59:59.5Z")
    );
    assert_eq!(p("1970-01-01T00:00:00Z"), None, "a day or more off");
    assert_eq!(p("soon"), None);
    assert_eq!(p(""), None);
}
