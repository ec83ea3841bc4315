//! RTVI 2.x messages on the data channel (`{"label":"rtvi-ai","type",...}`),
//! plus the SmallWebRTC signalling messages that share the channel.
//!
//! Parsing never fails the link: unknown types, malformed JSON and oversized
//! messages come back as [`Inbound::Ignored`] so the caller can count them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The `label` every RTVI message carries.
pub const RTVI_LABEL: &str = "rtvi-ai";
/// RTVI protocol version this gateway speaks.
pub const PROTOCOL_VERSION: &str = "2.0.0";
/// Largest data-channel message we parse; RTVI messages are small, and a
/// runaway sender must not make us buffer megabytes of JSON.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Keep-alive text SmallWebRTC peers exchange; Pipecat treats a client as
/// gone when none arrives for 3 s.
pub const PING: &str = "ping";

/// What a bot tells the kiosk.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum BotMessage {
    /// `bot-ready`: the bot is in the call and listening.
    BotReady {
        /// The RTVI version the bot speaks.
        version: String,
    },
    /// `user-started-speaking`: the bot hears the visitor.
    UserStartedSpeaking,
    /// `user-stopped-speaking`: the visitor paused.
    UserStoppedSpeaking,
    /// `user-transcription`: deprecated since Pipecat 1.13 but still sent
    /// by default, right after the `user-input` for the same words.
    UserTranscription {
        /// What was said.
        text: String,
        /// Whether this is the utterance's final text, not an interim guess.
        #[serde(rename = "final")]
        is_final: bool,
        /// When the speech-to-text produced it (Pipecat: RFC 3339 with
        /// milliseconds and `+00:00`).
        timestamp: Option<String>,
        /// The speaker's id in the call.
        user_id: Option<String>,
        /// Not in RTVI (no Pipecat message has one); read when an agent adds
        /// a number from 0 to 1.
        confidence: Option<f64>,
    },
    /// `user-input` (Pipecat 1.13+): what the user said (`input_type`
    /// `transcription`, interim ones included, or `backchannel`) or typed
    /// (`chat`).
    UserInput {
        /// What was said or typed.
        text: String,
        /// How it came: `transcription`, `backchannel` or `chat`.
        input_type: String,
        /// Whether this is the final text, not an interim guess.
        #[serde(rename = "final")]
        is_final: bool,
        /// When it was produced, as for `user-transcription`.
        timestamp: Option<String>,
        /// The speaker's id in the call.
        user_id: Option<String>,
        /// As for `user-transcription`.
        confidence: Option<f64>,
    },
    /// `bot-started-speaking`: the bot's audio begins.
    BotStartedSpeaking,
    /// `bot-stopped-speaking`: the bot's audio ends.
    BotStoppedSpeaking,
    /// `bot-transcription` (the LLM's text, one message per sentence, sent
    /// as it is generated) and `bot-tts-text` (what the TTS speaks, a
    /// sentence or a word at a time). Parsing never gives `kind:
    /// BotOutput`; a sender may use it for a sentence the bot has spoken,
    /// which goes out as Pipecat reports one (see [`BotOutput::spoken_sentence`]).
    BotText {
        /// Which of the messages it was.
        kind: BotTextKind,
        /// The text.
        text: String,
    },
    /// `bot-output`, with what it says about the text being spoken.
    BotOutput(BotOutput),
    /// `bot-interrupted`: the visitor spoke over the bot, which stopped.
    BotInterrupted,
    /// `error`: the bot reports a problem.
    Error {
        /// What went wrong, in the bot's words.
        error: String,
        /// Whether the bot gives up on the session.
        fatal: bool,
    },
    /// `server-message`: an application message from the agent.
    ServerMessage {
        /// Its content, as sent.
        data: Value,
    },
    /// `metrics`: the pipeline's timings and usage.
    Metrics {
        /// Its content, as sent.
        data: Value,
    },
}

impl BotMessage {
    /// The message's RTVI type, for logs: what a visitor said stays out of them.
    pub fn wire_type(&self) -> &'static str {
        match self {
            Self::BotReady { .. } => "bot-ready",
            Self::UserStartedSpeaking => "user-started-speaking",
            Self::UserStoppedSpeaking => "user-stopped-speaking",
            Self::UserTranscription { .. } => "user-transcription",
            Self::UserInput { .. } => "user-input",
            Self::BotStartedSpeaking => "bot-started-speaking",
            Self::BotStoppedSpeaking => "bot-stopped-speaking",
            Self::BotText { kind, .. } => kind.wire_type(),
            Self::BotOutput(_) => "bot-output",
            Self::BotInterrupted => "bot-interrupted",
            Self::Error { .. } => "error",
            Self::ServerMessage { .. } => "server-message",
            Self::Metrics { .. } => "metrics",
        }
    }
}

/// Which RTVI message a [`BotMessage::BotText`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BotTextKind {
    /// `bot-output`, for a sentence the bot has spoken.
    BotOutput,
    /// `bot-transcription`: the LLM's text.
    BotTranscription,
    /// `bot-tts-text`: what the TTS speaks.
    BotTtsText,
}

/// The data of a `bot-output` message. Pipecat 1.14
/// (`processors/frameworks/rtvi/models.py`, `BotOutputMessageData`) fills
/// `spoken` for 1.x clients and `will_be_spoken`, `spoken_status` and
/// `spoken_progress` for 2.x ones, but in practice sends all of them; every
/// field but `text` is optional here, and a malformed optional field reads
/// as absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BotOutput {
    /// The text.
    pub text: String,
    /// `output_type`, or its deprecated names `text_type`, `aggregated_by`:
    /// `sentence`, `word`, `token` or an agent's own type (`code`, ...).
    pub output_type: Option<String>,
    /// Which segment (an aggregated sentence) the message is about.
    pub segment_id: Option<u64>,
    /// 1.x: the text has been spoken (`false`: it is about to be, or never
    /// will be).
    pub spoken: Option<bool>,
    /// 2.x: whether the text is meant to be spoken at all.
    pub will_be_spoken: Option<bool>,
    /// 2.x: how far speaking it has got.
    pub spoken_status: Option<SpokenStatus>,
    /// 2.x: which part of it has been spoken.
    pub spoken_progress: Option<SpokenProgress>,
}

impl BotOutput {
    /// A whole sentence the bot has finished speaking, as Pipecat 1.14 sends
    /// it to a 2.x client after the sentence's audio (TTS without word
    /// timestamps).
    pub fn spoken_sentence(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            output_type: Some("sentence".into()),
            segment_id: None,
            spoken: Some(true),
            will_be_spoken: Some(true),
            spoken_status: Some(SpokenStatus::Completed),
            spoken_progress: Some(SpokenProgress {
                accumulated_text: text.clone(),
                remaining_text: String::new(),
            }),
            text,
        }
    }

    fn parse(data: &Value) -> Option<Self> {
        let text = data.get("text")?.as_str()?.to_owned();
        let string = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        let progress = data.get("spoken_progress");
        let progress_text = |key: &str| {
            progress
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Some(Self {
            text,
            output_type: string("output_type")
                .or_else(|| string("text_type"))
                .or_else(|| string("aggregated_by")),
            segment_id: data.get("segment_id").and_then(Value::as_u64),
            spoken: data.get("spoken").and_then(Value::as_bool),
            will_be_spoken: data.get("will_be_spoken").and_then(Value::as_bool),
            spoken_status: match data.get("spoken_status").and_then(Value::as_str) {
                Some("new") => Some(SpokenStatus::New),
                Some("in-progress") => Some(SpokenStatus::InProgress),
                Some("completed") => Some(SpokenStatus::Completed),
                _ => None,
            },
            spoken_progress: progress_text("accumulated_text")
                .zip(progress_text("remaining_text"))
                .map(|(accumulated_text, remaining_text)| SpokenProgress {
                    accumulated_text,
                    remaining_text,
                }),
        })
    }

    fn to_data(&self) -> Value {
        let mut data = json!({"text": self.text});
        if let Some(t) = &self.output_type {
            // Pipecat 1.14 fills the deprecated names too.
            for key in ["output_type", "text_type", "aggregated_by"] {
                data[key] = json!(t);
            }
        }
        if let Some(id) = self.segment_id {
            data["segment_id"] = json!(id);
        }
        if let Some(spoken) = self.spoken {
            data["spoken"] = json!(spoken);
        }
        if let Some(will) = self.will_be_spoken {
            data["will_be_spoken"] = json!(will);
        }
        if let Some(status) = self.spoken_status {
            data["spoken_status"] = json!(status);
        }
        if let Some(p) = &self.spoken_progress {
            data["spoken_progress"] = json!(p);
        }
        data
    }
}

/// Where a segment is in being spoken (`bot-output`'s `spoken_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpokenStatus {
    /// The segment's first message: it is about to be spoken (or, with
    /// `will_be_spoken: false`, never will be).
    New,
    /// A word of it has just been spoken (TTS with word timestamps).
    InProgress,
    /// Its last word has been spoken.
    Completed,
}

/// `bot-output`'s `spoken_progress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpokenProgress {
    /// Spoken so far, the current word included.
    pub accumulated_text: String,
    /// Not spoken yet (with its leading space).
    pub remaining_text: String,
}

impl BotTextKind {
    fn wire_type(self) -> &'static str {
        match self {
            Self::BotOutput => "bot-output",
            Self::BotTranscription => "bot-transcription",
            Self::BotTtsText => "bot-tts-text",
        }
    }
}

/// What the kiosk tells a bot.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// `client-ready`: the kiosk is set up and the bot may start.
    ClientReady,
    /// An application message (`client-message`, `{t, d}`).
    Custom {
        /// The message type, chosen by the application.
        t: String,
        /// Its data.
        d: Value,
    },
}

/// SmallWebRTC control messages (`{"type":"signalling","message":{...}}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signalling {
    /// The agent wants a fresh offer on the same `pc_id`.
    Renegotiate,
    /// The agent left the call.
    PeerLeft,
}

/// Why an inbound message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Longer than [`MAX_MESSAGE_BYTES`].
    Oversized,
    /// Not JSON, or not the shape its type calls for.
    Malformed,
    /// A type the gateway does not know.
    UnknownType,
    /// A documented RTVI message the gateway has no use for (LLM tokens,
    /// audio levels, function calls...): not counted as unknown.
    Unused,
}

/// Bot-to-client RTVI types of Pipecat 1.14 (`rtvi/models.py`) that carry
/// nothing a kiosk stores or acts on.
const UNUSED_TYPES: &[&str] = &[
    "bot-audio-level",
    "bot-llm-marker",
    "bot-llm-started",
    "bot-llm-stopped",
    "bot-llm-text",
    "bot-tts-audio",
    "bot-tts-started",
    "bot-tts-stopped",
    "error-response",
    "llm-function-call",
    "llm-function-call-in-progress",
    "llm-function-call-started",
    "llm-function-call-stopped",
    "llm-raw-text",
    "server-response",
    "stt-raw-text",
    "system-log",
    "tts-raw-text",
    "user-audio-level",
    "user-llm-text",
    "user-mute-started",
    "user-mute-stopped",
    "vad-user-started-speaking",
    "vad-user-stopped-speaking",
];

/// One parsed data-channel message, as seen by the kiosk.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// An RTVI message from the bot.
    Bot(BotMessage),
    /// A client-to-bot RTVI message (the loopback agent reads these).
    Client(ClientMessage),
    /// A SmallWebRTC control message.
    Signalling(Signalling),
    /// A keep-alive [`PING`].
    Ping,
    /// Dropped, and why.
    Ignored(Ignored),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    label: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    message: Value,
}

#[derive(Deserialize)]
struct TextData {
    text: String,
}

/// The fields `user-transcription` and `user-input` share. `text` must be a
/// string and `final`, when there, a boolean; the others read as absent
/// when malformed.
struct UserText {
    text: String,
    is_final: bool,
    timestamp: Option<String>,
    user_id: Option<String>,
    confidence: Option<f64>,
}

impl UserText {
    fn parse(data: &Value) -> Option<Self> {
        let string = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            text: data.get("text")?.as_str()?.to_owned(),
            is_final: match data.get("final") {
                None | Some(Value::Null) => false,
                Some(v) => v.as_bool()?,
            },
            timestamp: string("timestamp"),
            user_id: string("user_id"),
            confidence: data
                .get("confidence")
                .and_then(Value::as_f64)
                .filter(|c| (0.0..=1.0).contains(c)),
        })
    }
}

#[derive(Deserialize)]
struct ErrorData {
    error: String,
    #[serde(default)]
    fatal: bool,
}

#[derive(Deserialize)]
struct ReadyData {
    version: String,
}

#[derive(Deserialize)]
struct CustomData {
    t: String,
    #[serde(default)]
    d: Value,
}

/// Parses one data-channel message (either direction).
pub fn parse(bytes: &[u8]) -> Inbound {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Inbound::Ignored(Ignored::Oversized);
    }
    if bytes.starts_with(PING.as_bytes()) {
        return Inbound::Ping;
    }
    let Ok(env) = serde_json::from_slice::<Envelope>(bytes) else {
        return Inbound::Ignored(Ignored::Malformed);
    };
    if env.kind == "signalling" {
        return match env.message.get("type").and_then(Value::as_str) {
            Some("renegotiate") => Inbound::Signalling(Signalling::Renegotiate),
            Some("peerLeft") => Inbound::Signalling(Signalling::PeerLeft),
            _ => Inbound::Ignored(Ignored::UnknownType),
        };
    }
    if env.kind == "peerLeft" {
        return Inbound::Signalling(Signalling::PeerLeft);
    }
    if env.label.as_deref() != Some(RTVI_LABEL) {
        return Inbound::Ignored(Ignored::UnknownType);
    }
    parse_rtvi(&env.kind, env.data).unwrap_or(Inbound::Ignored(Ignored::Malformed))
}

fn parse_rtvi(kind: &str, data: Value) -> Option<Inbound> {
    fn from<T: serde::de::DeserializeOwned>(data: Value) -> Option<T> {
        serde_json::from_value(data).ok()
    }
    let text = |kind: BotTextKind, data: Value| {
        from::<TextData>(data).map(|d| BotMessage::BotText { kind, text: d.text })
    };
    let bot = match kind {
        "bot-ready" => BotMessage::BotReady {
            version: from::<ReadyData>(data)?.version,
        },
        "user-started-speaking" => BotMessage::UserStartedSpeaking,
        "user-stopped-speaking" => BotMessage::UserStoppedSpeaking,
        "user-transcription" => {
            let d = UserText::parse(&data)?;
            BotMessage::UserTranscription {
                text: d.text,
                is_final: d.is_final,
                timestamp: d.timestamp,
                user_id: d.user_id,
                confidence: d.confidence,
            }
        }
        "user-input" => {
            let d = UserText::parse(&data)?;
            BotMessage::UserInput {
                text: d.text,
                input_type: data.get("input_type")?.as_str()?.to_owned(),
                is_final: d.is_final,
                timestamp: d.timestamp,
                user_id: d.user_id,
                confidence: d.confidence,
            }
        }
        "bot-started-speaking" => BotMessage::BotStartedSpeaking,
        "bot-stopped-speaking" => BotMessage::BotStoppedSpeaking,
        "bot-output" => BotMessage::BotOutput(BotOutput::parse(&data)?),
        "bot-transcription" => text(BotTextKind::BotTranscription, data)?,
        "bot-tts-text" => text(BotTextKind::BotTtsText, data)?,
        "bot-interrupted" => BotMessage::BotInterrupted,
        "error" => {
            let d: ErrorData = from(data)?;
            BotMessage::Error {
                error: d.error,
                fatal: d.fatal,
            }
        }
        "server-message" => BotMessage::ServerMessage { data },
        "metrics" => BotMessage::Metrics { data },
        "client-ready" => return Some(Inbound::Client(ClientMessage::ClientReady)),
        "client-message" => {
            let d: CustomData = from(data)?;
            return Some(Inbound::Client(ClientMessage::Custom { t: d.t, d: d.d }));
        }
        other if UNUSED_TYPES.contains(&other) => return Some(Inbound::Ignored(Ignored::Unused)),
        _ => return Some(Inbound::Ignored(Ignored::UnknownType)),
    };
    Some(Inbound::Bot(bot))
}

fn envelope(kind: &str, id: &str, data: Option<Value>) -> String {
    let mut msg = json!({"label": RTVI_LABEL, "type": kind, "id": id});
    if let Some(data) = data {
        msg["data"] = data;
    }
    msg.to_string()
}

impl ClientMessage {
    /// The wire form, with message id `id`.
    pub fn to_json(&self, id: &str) -> String {
        match self {
            Self::ClientReady => envelope(
                "client-ready",
                id,
                Some(json!({
                    "version": PROTOCOL_VERSION,
                    "about": {
                        "library": "kiosk-gateway",
                        "library_version": env!("CARGO_PKG_VERSION"),
                        "platform": std::env::consts::OS,
                    }
                })),
            ),
            Self::Custom { t, d } => envelope("client-message", id, Some(json!({"t": t, "d": d}))),
        }
    }
}

impl BotMessage {
    /// The wire form, with message id `id` (used by the loopback agent).
    pub fn to_json(&self, id: &str) -> String {
        match self {
            Self::BotReady { version } => {
                envelope("bot-ready", id, Some(json!({"version": version})))
            }
            Self::UserStartedSpeaking => envelope("user-started-speaking", id, None),
            Self::UserStoppedSpeaking => envelope("user-stopped-speaking", id, None),
            Self::UserTranscription {
                text,
                is_final,
                timestamp,
                user_id,
                confidence,
            } => envelope(
                "user-transcription",
                id,
                Some(user_data(text, *is_final, timestamp, user_id, *confidence)),
            ),
            Self::UserInput {
                text,
                input_type,
                is_final,
                timestamp,
                user_id,
                confidence,
            } => {
                let mut data = user_data(text, *is_final, timestamp, user_id, *confidence);
                data["input_type"] = json!(input_type);
                envelope("user-input", id, Some(data))
            }
            Self::BotStartedSpeaking => envelope("bot-started-speaking", id, None),
            Self::BotStoppedSpeaking => envelope("bot-stopped-speaking", id, None),
            Self::BotText {
                kind: BotTextKind::BotOutput,
                text,
            } => envelope(
                "bot-output",
                id,
                Some(BotOutput::spoken_sentence(text.clone()).to_data()),
            ),
            Self::BotText { kind, text } => {
                envelope(kind.wire_type(), id, Some(json!({"text": text})))
            }
            Self::BotOutput(output) => envelope("bot-output", id, Some(output.to_data())),
            Self::BotInterrupted => envelope("bot-interrupted", id, None),
            Self::Error { error, fatal } => {
                envelope("error", id, Some(json!({"error": error, "fatal": fatal})))
            }
            Self::ServerMessage { data } => envelope("server-message", id, Some(data.clone())),
            Self::Metrics { data } => envelope("metrics", id, Some(data.clone())),
        }
    }
}

/// A user message's data, leaving out what is unknown as Pipecat does.
fn user_data(
    text: &str,
    is_final: bool,
    timestamp: &Option<String>,
    user_id: &Option<String>,
    confidence: Option<f64>,
) -> Value {
    let mut data = json!({"text": text, "final": is_final});
    if let Some(t) = timestamp {
        data["timestamp"] = json!(t);
    }
    if let Some(u) = user_id {
        data["user_id"] = json!(u);
    }
    if let Some(c) = confidence {
        data["confidence"] = json!(c);
    }
    data
}

/// The wire form of a SmallWebRTC signalling message.
pub fn signalling_json(message: &Signalling) -> String {
    let kind = match message {
        Signalling::Renegotiate => "renegotiate",
        Signalling::PeerLeft => "peerLeft",
    };
    json!({"type": "signalling", "message": {"type": kind}}).to_string()
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/fixtures/rtvi/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn parses_pipecat_samples() {
        assert_eq!(
            parse(&fixture("bot-ready.json")),
            Inbound::Bot(BotMessage::BotReady {
                version: "2.2.0".into()
            })
        );
        assert_eq!(
            parse(&fixture("user-transcription.json")),
            Inbound::Bot(BotMessage::UserTranscription {
                text: "hello kiosk".into(),
                is_final: true,
                timestamp: Some("2026-11-22T01:00:00.000Z".into()),
                user_id: Some("SmallWebRTCConnection#0-1234".into()),
                confidence: None,
            })
        );
        assert_eq!(
            parse(&fixture("bot-output.json")),
            Inbound::Bot(BotMessage::BotOutput(BotOutput {
                text: "Hi there.".into(),
                output_type: Some("sentence".into()),
                will_be_spoken: Some(true),
                spoken_status: Some(SpokenStatus::New),
                ..BotOutput::default()
            }))
        );
        assert_eq!(
            parse(&fixture("renegotiate.json")),
            Inbound::Signalling(Signalling::Renegotiate)
        );
        assert_eq!(
            parse(&fixture("peer-left.json")),
            Inbound::Signalling(Signalling::PeerLeft)
        );
        assert_eq!(
            parse(br#"{"label":"rtvi-ai","type":"bot-llm-started"}"#),
            Inbound::Ignored(Ignored::Unused)
        );
        assert_eq!(
            parse(br#"{"label":"rtvi-ai","type":"bot-from-the-future"}"#),
            Inbound::Ignored(Ignored::UnknownType)
        );
    }

    /// Every message of the sequences Pipecat 1.14's observer sent
    /// (fixtures/rtvi/generated-1.14) parses, and what the gateway uses is
    /// read in full.
    #[test]
    fn parses_pipecat_1_14_bot_output_and_user_input() {
        let line = r#"{"label": "rtvi-ai", "type": "bot-output", "data": {"text": "Hello there.", "output_type": "sentence", "text_type": "sentence", "aggregated_by": "sentence", "segment_id": 279, "will_be_spoken": true, "spoken_status": "in-progress", "spoken_progress": {"accumulated_text": "Hello", "remaining_text": " there."}}}"#;
        assert_eq!(
            parse(line.as_bytes()),
            Inbound::Bot(BotMessage::BotOutput(BotOutput {
                text: "Hello there.".into(),
                output_type: Some("sentence".into()),
                segment_id: Some(279),
                spoken: None,
                will_be_spoken: Some(true),
                spoken_status: Some(SpokenStatus::InProgress),
                spoken_progress: Some(SpokenProgress {
                    accumulated_text: "Hello".into(),
                    remaining_text: " there.".into(),
                }),
            }))
        );
        let line = r#"{"label": "rtvi-ai", "type": "user-input", "data": {"text": "What time", "input_type": "transcription", "timestamp": "2026-03-02T10:00:00.000+00:00", "final": false, "user_id": "user-1"}}"#;
        assert_eq!(
            parse(line.as_bytes()),
            Inbound::Bot(BotMessage::UserInput {
                text: "What time".into(),
                input_type: "transcription".into(),
                is_final: false,
                timestamp: Some("2026-03-02T10:00:00.000+00:00".into()),
                user_id: Some("user-1".into()),
                confidence: None,
            })
        );
        // 1.x shape, deprecated names only.
        let line = r#"{"label":"rtvi-ai","type":"bot-output","data":{"text":"Hi","spoken":true,"aggregated_by":"word"}}"#;
        let Inbound::Bot(BotMessage::BotOutput(o)) = parse(line.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            (o.output_type.as_deref(), o.spoken, o.spoken_status),
            (Some("word"), Some(true), None)
        );

        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rtvi/generated-1.14");
        let mut messages = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            for line in std::fs::read_to_string(entry.unwrap().path())
                .unwrap()
                .lines()
            {
                messages += 1;
                let kind: Value = serde_json::from_str(line).unwrap();
                let kind = kind["type"].as_str().unwrap();
                match parse(line.as_bytes()) {
                    Inbound::Bot(_) => {}
                    Inbound::Ignored(Ignored::Unused) => assert!(
                        kind.starts_with("bot-llm-") || kind.starts_with("bot-tts-st"),
                        "{line}"
                    ),
                    other => panic!("{line}: {other:?}"),
                }
            }
        }
        assert!(messages > 300, "{messages}");
    }

    #[test]
    fn optional_fields_that_are_malformed_read_as_absent() {
        let line = r#"{"label":"rtvi-ai","type":"bot-output","data":{"text":"x","segment_id":"7","spoken":"yes","spoken_status":"done","spoken_progress":{"accumulated_text":1}}}"#;
        assert_eq!(
            parse(line.as_bytes()),
            Inbound::Bot(BotMessage::BotOutput(BotOutput {
                text: "x".into(),
                ..BotOutput::default()
            }))
        );
        let line = r#"{"label":"rtvi-ai","type":"user-transcription","data":{"text":"x","final":true,"timestamp":12,"user_id":null,"confidence":0.5}}"#;
        assert_eq!(
            parse(line.as_bytes()),
            Inbound::Bot(BotMessage::UserTranscription {
                text: "x".into(),
                is_final: true,
                timestamp: None,
                user_id: None,
                confidence: Some(0.5),
            })
        );
        // What the gateway cannot do without is still required.
        for bad in [
            r#"{"label":"rtvi-ai","type":"bot-output","data":{"spoken":true}}"#,
            r#"{"label":"rtvi-ai","type":"user-transcription","data":{"text":"x","final":"yes"}}"#,
            r#"{"label":"rtvi-ai","type":"user-input","data":{"text":"x","final":true}}"#,
        ] {
            assert_eq!(
                parse(bad.as_bytes()),
                Inbound::Ignored(Ignored::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_input_is_ignored_not_fatal() {
        assert_eq!(parse(b"{not json"), Inbound::Ignored(Ignored::Malformed));
        assert_eq!(
            parse(br#"{"label":"rtvi-ai","type":"user-transcription","data":{"final":true}}"#),
            Inbound::Ignored(Ignored::Malformed)
        );
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(parse(&big), Inbound::Ignored(Ignored::Oversized));
        assert_eq!(parse(b"ping 12"), Inbound::Ping);
    }

    #[test]
    fn round_trips_both_directions() {
        let ready = ClientMessage::ClientReady.to_json("1");
        assert_eq!(
            parse(ready.as_bytes()),
            Inbound::Client(ClientMessage::ClientReady)
        );
        let v: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(v["data"]["version"], PROTOCOL_VERSION);
        assert_eq!(v["data"]["about"]["library"], "kiosk-gateway");

        let msgs = [
            BotMessage::UserStoppedSpeaking,
            BotMessage::BotText {
                kind: BotTextKind::BotTtsText,
                text: "x".into(),
            },
            BotMessage::BotText {
                kind: BotTextKind::BotTranscription,
                text: "y.".into(),
            },
            BotMessage::BotOutput(BotOutput {
                segment_id: Some(4),
                ..BotOutput::spoken_sentence("Hi.")
            }),
            BotMessage::UserTranscription {
                text: "a".into(),
                is_final: true,
                timestamp: Some("2026-03-02T10:00:00.000+00:00".into()),
                user_id: None,
                confidence: Some(0.25),
            },
            BotMessage::UserInput {
                text: "b".into(),
                input_type: "backchannel".into(),
                is_final: true,
                timestamp: None,
                user_id: Some("u".into()),
                confidence: None,
            },
            BotMessage::Error {
                error: "boom".into(),
                fatal: false,
            },
        ];
        for m in msgs {
            assert_eq!(parse(m.to_json("7").as_bytes()), Inbound::Bot(m));
        }
        // The simple form a sender uses for a spoken sentence goes out as
        // Pipecat 1.14 sends one.
        let sent = BotMessage::BotText {
            kind: BotTextKind::BotOutput,
            text: "Done.".into(),
        }
        .to_json("8");
        assert_eq!(
            parse(sent.as_bytes()),
            Inbound::Bot(BotMessage::BotOutput(BotOutput::spoken_sentence("Done.")))
        );
        let v: Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(v["data"]["spoken_status"], "completed");
        assert_eq!(v["data"]["aggregated_by"], "sentence");
        assert_eq!(v["data"]["spoken_progress"]["remaining_text"], "");
        assert_eq!(
            parse(signalling_json(&Signalling::PeerLeft).as_bytes()),
            Inbound::Signalling(Signalling::PeerLeft)
        );
    }
}
