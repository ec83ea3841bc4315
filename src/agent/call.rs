//! One call with a kiosk: the data channel (RTVI), and a turn for every
//! utterance the agent's ear closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use super::ear::Utterance;
#[cfg(feature = "testkit")]
use super::hostile::HostileAudio;
use super::{Shared, media};
use crate::audio::{self, AudioError};
use crate::link::peer::{Peer, PeerSignal};
use crate::link::rtvi::{
    self, BotMessage, BotOutput, BotTextKind, ClientMessage, Inbound, PROTOCOL_VERSION,
    SpokenStatus,
};

pub(super) async fn run(
    peer: Arc<Peer>,
    mut signals: mpsc::Receiver<PeerSignal>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    mut renegotiate: mpsc::Receiver<()>,
) {
    let (utterance_tx, mut utterance_rx) = mpsc::channel::<Utterance>(8);
    let (dc_tx, mut dc_rx) = mpsc::channel::<Arc<dyn DataChannel>>(1);
    let mut dc: Option<Arc<dyn DataChannel>> = None;
    let mut replies = 0u32;
    let (voice_tx, voice_rx) = mpsc::channel::<media::Reply>(1);
    // The audio track starts sending once the call is up (its data
    // channel open), and ends with this task, which holds `voice_tx`.
    let mut voice_rx = Some(voice_rx);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Some(dc) = &dc {
                    let _ = dc.send_text(&rtvi::signalling_json(&rtvi::Signalling::PeerLeft)).await;
                    // Let SCTP deliver it before the connection goes.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break;
            }
            signal = signals.recv() => match signal {
                None => break,
                Some(PeerSignal::Track(track)) => {
                    tokio::spawn(media::decode_track(track, Arc::clone(&shared), utterance_tx.clone()));
                }
                Some(PeerSignal::DataChannel(channel)) => {
                    tokio::spawn(serve_data_channel(channel, Arc::clone(&shared), dc_tx.clone()));
                }
                Some(PeerSignal::State(s @ (RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed))) => {
                    debug!(state = %s, "loopback session ended");
                    break;
                }
                Some(_) => {}
            },
            Some(channel) = dc_rx.recv() => {
                dc = Some(channel);
                if let Some(rx) = voice_rx.take() {
                    tokio::spawn(media::stream(Arc::clone(&peer), Arc::clone(&shared), rx));
                }
            }
            Some(()) = renegotiate.recv() => {
                if let Some(dc) = &dc {
                    let _ = dc.send_text(&rtvi::signalling_json(&rtvi::Signalling::Renegotiate)).await;
                }
            }
            Some(utterance) = utterance_rx.recv() => {
                replies += 1;
                if let Some(dc) = &dc {
                    #[cfg(feature = "testkit")]
                    let voice = media::play(
                        &voice_tx,
                        (shared.config.hostile && replies == 1).then(|| HostileAudio::new(&shared)),
                    );
                    #[cfg(not(feature = "testkit"))]
                    let voice = media::play(&voice_tx);
                    turn(dc, replies, utterance, voice).await;
                }
            }
        }
    }
    peer.pc.close().await.ok();
}

async fn serve_data_channel(
    dc: Arc<dyn DataChannel>,
    shared: Arc<Shared>,
    announce: mpsc::Sender<Arc<dyn DataChannel>>,
) {
    let _ = announce.send(Arc::clone(&dc)).await;
    while let Some(event) = dc.poll().await {
        let DataChannelEvent::OnMessage(msg) = event else {
            if matches!(event, DataChannelEvent::OnClose) {
                break;
            }
            continue;
        };
        match rtvi::parse(&msg.data) {
            Inbound::Client(message) => {
                if message == ClientMessage::ClientReady {
                    let ready = BotMessage::BotReady {
                        version: PROTOCOL_VERSION.into(),
                    };
                    let _ = dc.send_text(&ready.to_json("bot-ready")).await;
                }
                shared.record().client_messages.push(message);
            }
            Inbound::Ping => {}
            other => debug!(?other, "loopback agent ignored a message"),
        }
    }
}

/// The RTVI sequence a voice bot sends for one turn, with the reply
/// `voice` played between bot-started and bot-stopped speaking.
async fn turn(
    dc: &Arc<dyn DataChannel>,
    n: u32,
    utterance: Utterance,
    voice: impl Future<Output = Result<(), AudioError>>,
) {
    let send = |m: BotMessage| {
        let dc = Arc::clone(dc);
        async move {
            let _ = dc
                .send_text(&m.to_json(&format!("{:x}", rand::random::<u32>())))
                .await;
        }
    };
    // The sequence Pipecat 1.14 sends for one turn with a TTS that has no
    // word timestamps (fixtures/rtvi/pipecat-1.14/): an interim and a final
    // transcription, the sentence as the LLM wrote it (bot-transcription),
    // bot-output "new" before the audio, then bot-output "completed" and
    // bot-tts-text after it. A kiosk that stores one line per sentence
    // stores exactly one "reply N".
    let heard = format!("utterance {n} ({:.1} s)", utterance.speech.as_secs_f64());
    let sentence = format!("reply {n}");
    let transcription = |text: String, is_final: bool| BotMessage::UserTranscription {
        text,
        is_final,
        timestamp: Some(jiff::Timestamp::now().to_string()),
        user_id: Some("kiosk".into()),
        confidence: None,
    };
    send(BotMessage::UserStartedSpeaking).await;
    send(transcription(format!("utterance {n}"), false)).await;
    send(BotMessage::UserStoppedSpeaking).await;
    send(transcription(heard.clone(), true)).await;
    // What a kiosk must store, and when it could first have: tests that
    // kill the kiosk compare its store with these lines.
    info!(role = "user", line = %heard, "final line sent");
    send(BotMessage::BotText {
        kind: BotTextKind::BotTranscription,
        text: sentence.clone(),
    })
    .await;
    send(BotMessage::BotStartedSpeaking).await;
    send(BotMessage::BotOutput(BotOutput {
        text: sentence.clone(),
        output_type: Some("sentence".into()),
        spoken: Some(false),
        will_be_spoken: Some(true),
        spoken_status: Some(SpokenStatus::New),
        ..BotOutput::default()
    }))
    .await;
    if let Err(e) = voice.await {
        warn!(error = %audio::error_chain(&e), "loopback agent could not play its reply");
    }
    send(BotMessage::BotOutput(BotOutput::spoken_sentence(
        sentence.clone(),
    )))
    .await;
    send(BotMessage::BotText {
        kind: BotTextKind::BotTtsText,
        text: sentence.clone(),
    })
    .await;
    send(BotMessage::BotStoppedSpeaking).await;
    info!(role = "bot", line = %sentence, "final line sent");
}
