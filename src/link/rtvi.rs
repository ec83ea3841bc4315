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
    BotReady {
        version: String,
    },
    UserStartedSpeaking,
    UserStoppedSpeaking,
    UserTranscription {
        text: String,
        #[serde(rename = "final")]
        is_final: bool,
        timestamp: Option<String>,
        user_id: Option<String>,
    },
    BotStartedSpeaking,
    BotStoppedSpeaking,
    /// `bot-output`, `bot-transcription` and `bot-tts-text` all carry what
    /// the bot says; `kind` keeps which one it was.
    BotText {
        kind: BotTextKind,
        text: String,
    },
    BotInterrupted,
    Error {
        error: String,
        fatal: bool,
    },
    ServerMessage {
        data: Value,
    },
    Metrics {
        data: Value,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BotTextKind {
    BotOutput,
    BotTranscription,
    BotTtsText,
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
    ClientReady,
    /// An application message (`client-message`, `{t, d}`).
    Custom {
        t: String,
        d: Value,
    },
}

/// SmallWebRTC control messages (`{"type":"signalling","message":{...}}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signalling {
    /// The agent wants a fresh offer on the same `pc_id`.
    Renegotiate,
    PeerLeft,
}

/// Why an inbound message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    Oversized,
    Malformed,
    UnknownType,
}

/// One parsed data-channel message, as seen by the kiosk.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    Bot(BotMessage),
    Client(ClientMessage),
    Signalling(Signalling),
    Ping,
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

#[derive(Deserialize)]
struct TranscriptionData {
    text: String,
    #[serde(rename = "final", default)]
    is_final: bool,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
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
            let d: TranscriptionData = from(data)?;
            BotMessage::UserTranscription {
                text: d.text,
                is_final: d.is_final,
                timestamp: d.timestamp,
                user_id: d.user_id,
            }
        }
        "bot-started-speaking" => BotMessage::BotStartedSpeaking,
        "bot-stopped-speaking" => BotMessage::BotStoppedSpeaking,
        "bot-output" => text(BotTextKind::BotOutput, data)?,
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
            } => envelope(
                "user-transcription",
                id,
                Some(
                    json!({"text": text, "final": is_final, "timestamp": timestamp, "user_id": user_id}),
                ),
            ),
            Self::BotStartedSpeaking => envelope("bot-started-speaking", id, None),
            Self::BotStoppedSpeaking => envelope("bot-stopped-speaking", id, None),
            Self::BotText { kind, text } => envelope(
                kind.wire_type(),
                id,
                Some(json!({"text": text, "output_type": "sentence", "will_be_spoken": true})),
            ),
            Self::BotInterrupted => envelope("bot-interrupted", id, None),
            Self::Error { error, fatal } => {
                envelope("error", id, Some(json!({"error": error, "fatal": fatal})))
            }
            Self::ServerMessage { data } => envelope("server-message", id, Some(data.clone())),
            Self::Metrics { data } => envelope("metrics", id, Some(data.clone())),
        }
    }
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
            })
        );
        assert_eq!(
            parse(&fixture("bot-output.json")),
            Inbound::Bot(BotMessage::BotText {
                kind: BotTextKind::BotOutput,
                text: "Hi there.".into()
            })
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
            Inbound::Ignored(Ignored::UnknownType)
        );
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
            BotMessage::Error {
                error: "boom".into(),
                fatal: false,
            },
        ];
        for m in msgs {
            assert_eq!(parse(m.to_json("7").as_bytes()), Inbound::Bot(m));
        }
        assert_eq!(
            parse(signalling_json(&Signalling::PeerLeft).as_bytes()),
            Inbound::Signalling(Signalling::PeerLeft)
        );
    }
}
