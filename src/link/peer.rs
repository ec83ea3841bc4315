//! Building a webrtc-rs peer connection with one Opus track; shared by the
//! kiosk side ([`super::Link`]) and the loopback agent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use super::remote_report::{RemoteReports, ReportReader};
use super::send_clocked::SendClockedRuntime;
use super::setup_flush::SetupFlush;
use crate::audio::{AgentDecoder, Millis};

/// Application-most, after the RTCP report generators: it only watches.
const SETUP_FLUSH_SLOT: usize = 20_000;

/// Opus over RTP: 48 kHz clock; the SDP always says 2 channels (RFC 7587).
pub const OPUS_CLOCK_RATE: u32 = 48_000;
const OPUS_PAYLOAD_TYPE: u8 = 111;

pub(crate) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: OPUS_CLOCK_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// What an SDP answer says the agent's Opus decoder takes. Garbage says
/// nothing: no FEC, no limit.
pub(crate) fn agent_decoder(sdp: &str) -> AgentDecoder {
    AgentDecoder {
        inband_fec: answer_uses_inband_fec(sdp),
        max_packet: answer_max_packet(sdp),
    }
}

/// Whether an SDP answer says the agent's Opus decoder uses in-band FEC:
/// `useinbandfec=1` in the fmtp line of an Opus payload type (RFC 7587:
/// absent means 0). A stock Pipecat bot (aiortc) answers with no fmtp for
/// Opus and never decodes FEC; browsers and libwebrtc say 1.
fn answer_uses_inband_fec(sdp: &str) -> bool {
    let opus_types: Vec<&str> = sdp
        .lines()
        .filter_map(|line| {
            let (pt, codec) = line.trim().strip_prefix("a=rtpmap:")?.split_once(' ')?;
            codec
                .get(..5)
                .is_some_and(|c| c.eq_ignore_ascii_case("opus/"))
                .then_some(pt)
        })
        .collect();
    sdp.lines()
        .filter_map(|line| line.trim().strip_prefix("a=fmtp:")?.split_once(' '))
        .filter(|(pt, _)| opus_types.contains(pt))
        .any(|(_, params)| {
            params.split(';').any(|p| {
                let (key, value) = p.split_once('=').unwrap_or((p, ""));
                key.trim().eq_ignore_ascii_case("useinbandfec") && value.trim() == "1"
            })
        })
}

/// The shortest of the answer's `a=maxptime` (the longest packet the
/// agent takes) and `a=ptime` (the length it prefers), in whole
/// milliseconds (RFC 4566 allows fractions). Our offer has one audio
/// section, so the lines are read wherever they stand. Neither is sent by
/// a stock Pipecat bot (aiortc) or by browsers.
fn answer_max_packet(sdp: &str) -> Option<Millis> {
    sdp.lines()
        .filter_map(|line| {
            let line = line.trim();
            let value = line
                .strip_prefix("a=maxptime:")
                .or_else(|| line.strip_prefix("a=ptime:"))?;
            let ms = value.trim().parse::<f64>().ok()?;
            (ms.is_finite() && ms >= 1.0).then(|| Millis(ms.min(f64::from(u32::MAX)) as u32))
        })
        .min()
}

/// Something the peer connection's driver reported.
pub(crate) enum PeerSignal {
    Candidate(RTCIceCandidateInit),
    GatheringComplete,
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
}

/// Signals held for the link before the newest are dropped: a call sees a
/// handful (candidates, a few state changes, one track); only a flood from
/// a hostile agent (track after track on renegotiation) fills it.
const SIGNALS: usize = 256;

/// Forwards driver callbacks into a bounded channel: callbacks run on the
/// driver, so they must return at once and never block it; what does not
/// fit is dropped and counted.
struct Forwarder(mpsc::Sender<PeerSignal>);

impl Forwarder {
    fn send(&self, signal: PeerSignal) {
        if self.0.try_send(signal).is_err() {
            metrics::counter!("kiosk_link_peer_signals_dropped_total").increment(1);
        }
    }
}

#[async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.send(PeerSignal::Candidate(init));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.send(PeerSignal::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.send(PeerSignal::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.send(PeerSignal::Track(track));
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        self.send(PeerSignal::DataChannel(channel));
    }
}

/// Network and ICE settings for one peer connection.
#[derive(Clone, Debug)]
pub(crate) struct PeerConfig {
    pub ice_servers: Vec<RTCIceServer>,
    pub udp_bind: Vec<String>,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub ice_keepalive_interval: Duration,
    /// Time between ICE connectivity checks; `None` for the stack's 200 ms.
    /// The first timer after ICE connects is this far off, and a DTLS
    /// client's first handshake flight waits for it.
    pub ice_check_interval: Option<Duration>,
    /// Read the UDP socket when media is sent, while it streams, instead of
    /// waking for each datagram ([`super::send_clocked`]).
    pub receive_on_send_clock: bool,
}

pub(crate) struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub audio: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    /// What the far end reports of our audio.
    pub reports: Arc<RemoteReports>,
}

impl Peer {
    /// A peer connection with a sendrecv Opus track sending as `ssrc`.
    pub async fn build(
        config: &PeerConfig,
        ssrc: u32,
    ) -> Result<(Self, mpsc::Receiver<PeerSignal>), webrtc::error::Error> {
        let mut media_engine = MediaEngine::default();
        let codec = RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PAYLOAD_TYPE,
        };
        media_engine.register_codec(codec, RtpCodecKind::Audio)?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?
            .with(Slot::Custom(SETUP_FLUSH_SLOT), SetupFlush::default());
        // Application-most: it only reads the far end's reports on our audio.
        let reports = Arc::new(RemoteReports::default());
        let registry = registry.with(
            Slot::from(14_000),
            ReportReader::new(ssrc, Arc::clone(&reports)),
        );
        // No mDNS: agents (Pipecat, SFUs, a loopback agent) offer plain host
        // candidates, never `.local` names, and the mDNS socket cannot even
        // be opened on a kiosk whose network has no multicast route, which
        // would fail every call.
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(config.ice_disconnected_timeout),
                Some(config.ice_failed_timeout),
                Some(config.ice_keepalive_interval),
            )
            .with_ice_connection_attempts(config.ice_check_interval, None)
            .build();
        let (tx, rx) = mpsc::channel(SIGNALS);
        let mut builder = PeerConnectionBuilder::new();
        if config.receive_on_send_clock {
            builder = builder.with_runtime(Arc::new(SendClockedRuntime));
        }
        let pc = builder
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(config.ice_servers.clone())
                    .build(),
            )
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Forwarder(tx)))
            .with_udp_addrs(config.udp_bind.clone())
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let audio = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "kiosk-gateway".to_owned(),
            "audio".to_owned(),
            "audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus_codec(),
                ..Default::default()
            }],
        )));
        pc.add_track(Arc::clone(&audio) as Arc<dyn TrackLocal>)
            .await?;
        Ok((
            Self {
                pc,
                audio,
                ssrc,
                reports,
            },
            rx,
        ))
    }

    /// Payload type the answer settled on for our Opus sender.
    pub async fn payload_type(&self) -> u8 {
        for sender in self.pc.get_senders().await {
            if let Ok(params) = sender.get_parameters().await
                && let Some(codec) = params.rtp_parameters.codecs.first()
            {
                return codec.payload_type;
            }
        }
        OPUS_PAYLOAD_TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::{agent_decoder, answer_uses_inband_fec};
    use crate::audio::Millis;

    /// The audio section of an answer, with `fmtp` lines as given.
    fn answer(fmtp: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n\
             a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n{fmtp}a=sendrecv\r\n"
        )
    }

    #[test]
    fn fec_is_used_only_where_the_answer_declares_it_for_opus() {
        // aiortc (a stock Pipecat bot): no fmtp for Opus at all.
        assert!(!answer_uses_inband_fec(&answer("")));
        // Browsers and libwebrtc.
        assert!(answer_uses_inband_fec(&answer(
            "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
        )));
        assert!(answer_uses_inband_fec(&answer(
            "a=fmtp:111 minptime=10; UseInbandFec = 1\r\n"
        )));
        assert!(!answer_uses_inband_fec(&answer(
            "a=fmtp:111 minptime=10;useinbandfec=0\r\n"
        )));
        // Declared for another codec's payload type: not Opus's.
        assert!(!answer_uses_inband_fec(&answer(
            "a=fmtp:0 useinbandfec=1\r\n"
        )));
        // Garbage or truncated lines say nothing.
        for sdp in [
            "",
            "a=fmtp:",
            "a=rtpmap:111",
            "a=fmtp:111",
            "\u{0}\u{ff}a=rtpmap:111 op",
        ] {
            assert!(!answer_uses_inband_fec(sdp), "{sdp:?}");
        }
    }

    #[test]
    fn packets_are_limited_only_where_the_answer_asks() {
        let limit = |lines: &str| agent_decoder(&answer(lines)).max_packet;
        // aiortc and browsers: no ptime, no maxptime.
        assert_eq!(limit(""), None);
        assert_eq!(limit("a=maxptime:20\r\n"), Some(Millis(20)));
        assert_eq!(limit("a=ptime:20\r\na=maxptime:120\r\n"), Some(Millis(20)));
        assert_eq!(limit("a=maxptime:60\r\na=ptime:40\r\n"), Some(Millis(40)));
        assert_eq!(limit("a=ptime:22.5\r\n"), Some(Millis(22)));
        // Garbage, zero, negative and absurd values say nothing.
        for lines in [
            "a=maxptime:\r\n",
            "a=maxptime:twenty\r\n",
            "a=maxptime:0\r\n",
            "a=ptime:-20\r\n",
            "a=ptime:NaN\r\n",
            "a=ptime:inf\r\n",
            "a=maxptime 20\r\n",
        ] {
            assert_eq!(limit(lines), None, "{lines:?}");
        }
        assert_eq!(limit("a=maxptime:1e12\r\n"), Some(Millis(u32::MAX)));
    }
}
