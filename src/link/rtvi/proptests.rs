//! Hostile data-channel input: any bytes, and RTVI-shaped JSON with any
//! types and data, parse without panicking, and what parses goes through
//! the transcript assembler without panicking either. Cases: 256 by
//! default, `PROPTEST_CASES=100000` for the full run.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::link::transcript::TranscriptAssembler;

const TYPES: &[&str] = &[
    "bot-ready",
    "user-started-speaking",
    "user-stopped-speaking",
    "user-transcription",
    "user-input",
    "bot-started-speaking",
    "bot-stopped-speaking",
    "bot-output",
    "bot-transcription",
    "bot-tts-text",
    "bot-interrupted",
    "error",
    "server-message",
    "metrics",
    "client-ready",
    "client-message",
    "bot-llm-text",
    "signalling",
    "peerLeft",
    "",
];

const KEYS: &[&str] = &[
    "text",
    "final",
    "timestamp",
    "user_id",
    "confidence",
    "input_type",
    "spoken",
    "will_be_spoken",
    "spoken_status",
    "spoken_progress",
    "accumulated_text",
    "remaining_text",
    "aggregated_by",
    "output_type",
    "text_type",
    "segment_id",
    "version",
    "error",
    "fatal",
    "t",
    "d",
    "type",
    "message",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        prop::sample::select(vec![
            "2026-12-01T14:26:09.713+00:00",
            "not a time",
            "completed",
            "in-progress",
            "new",
            "sentence",
            "word",
            "renegotiate",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #[test]
    fn any_bytes_parse_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn rtvi_shaped_messages_parse_and_assemble_without_panicking(
        messages in prop::collection::vec(
            (prop::sample::select(TYPES), any_json(), any::<bool>()),
            1..12,
        )
    ) {
        let mut transcript = TranscriptAssembler::new();
        let now = jiff::Timestamp::now();
        for (kind, data, labelled) in messages {
            let mut msg = json!({"type": kind, "data": data.clone(), "message": data});
            if labelled {
                msg["label"] = RTVI_LABEL.into();
            }
            if let Inbound::Bot(m) = parse(msg.to_string().as_bytes()) {
                let _ = m.wire_type();
                let _ = transcript.push(&m, now);
            }
        }
        let _ = transcript.finish(now);
    }
}
