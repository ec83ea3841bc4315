//! The SDP the user agent offers, and what it takes from an answer (or
//! from a peer's re-offer): where to send RTP and RTCP, and which codec.
//! Parsing is `rtc`'s SDP parser; the offer is small enough to write out.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc::sdp::description::session::SessionDescription;

use crate::audio::Millis;

/// Opus's payload type in our offer (dynamic; what Daily and browsers use).
pub const OPUS_PT: u8 = 111;
/// G.711 μ-law's static payload type.
pub const PCMU_PT: u8 = 0;
/// The packet length the offer asks for (`a=ptime`), and so the length
/// the leg's own Opus frames have: Daily's endpoint has been tried with
/// no other.
pub const OFFERED_PTIME: Millis = Millis(20);

/// The audio codec the call runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// 48 kHz RTP clock, 20 ms frames, in-band FEC.
    Opus,
    /// 8 kHz, 160 samples a packet.
    Pcmu,
}

impl Codec {
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Opus => 48_000,
            Self::Pcmu => 8_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Opus => "opus/48000/2",
            Self::Pcmu => "PCMU/8000",
        }
    }
}

/// The peer's media, from its SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteMedia {
    pub rtp: SocketAddr,
    /// Where RTCP goes: the RTP address with `rtcp-mux`, else `a=rtcp` or
    /// RTP port + 1.
    pub rtcp: SocketAddr,
    pub rtcp_mux: bool,
    pub codec: Codec,
    /// The payload type the peer listed for the codec (what we send with).
    pub payload_type: u8,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("not SDP: {0}")]
    Syntax(String),
    #[error("no audio stream in the SDP")]
    NoAudio,
    #[error("the peer refused the audio stream (port 0)")]
    AudioRefused,
    #[error("no connection address for audio")]
    NoAddress,
    #[error("no codec in common (we offer opus/48000 and PCMU/8000; the peer has {0})")]
    NoCommonCodec(String),
}

/// Which codecs an offer lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codecs {
    /// Opus first, PCMU as the fallback (`dial`: any peer).
    OpusOrPcmu,
    /// Opus only: a session's leg hands Opus to the audio engine as it
    /// comes, and Daily rooms are created with `codecs: ["OPUS"]`.
    OpusOnly,
}

/// Our offer: Opus first, PCMU as the fallback unless left out, `rtcp-mux`
/// offered (RTCP is also listened for on port + 1 in case the peer
/// declines it).
pub fn offer(rtp: SocketAddr, session_id: u64, version: u64, codecs: Codecs) -> String {
    let (family, ip) = match rtp.ip() {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    let (formats, pcmu) = match codecs {
        Codecs::OpusOrPcmu => (
            format!("{OPUS_PT} {PCMU_PT}"),
            format!("a=rtpmap:{PCMU_PT} PCMU/8000\r\n"),
        ),
        Codecs::OpusOnly => (OPUS_PT.to_string(), String::new()),
    };
    format!(
        "v=0\r\n\
         o=kiosk-gateway {session_id} {version} IN {family} {ip}\r\n\
         s=kiosk-gateway\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP {formats}\r\n\
         a=rtpmap:{OPUS_PT} opus/48000/2\r\n\
         a=fmtp:{OPUS_PT} useinbandfec=1\r\n\
         {pcmu}\
         a=ptime:{ptime}\r\n\
         a=rtcp-mux\r\n\
         a=sendrecv\r\n",
        port = rtp.port(),
        ptime = OFFERED_PTIME.0,
    )
}

/// Reads the peer's audio stream from its SDP. The first format it lists
/// that we offered wins, matched by name (a peer may renumber Opus).
pub fn parse_remote(body: &[u8]) -> Result<RemoteMedia, SdpError> {
    let sdp = SessionDescription::unmarshal(&mut Cursor::new(body))
        .map_err(|e| SdpError::Syntax(e.to_string()))?;
    let audio = sdp
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "audio")
        .ok_or(SdpError::NoAudio)?;
    let port = u16::try_from(audio.media_name.port.value).map_err(|_| SdpError::AudioRefused)?;
    if port == 0 {
        return Err(SdpError::AudioRefused);
    }
    let address = audio
        .connection_information
        .as_ref()
        .or(sdp.connection_information.as_ref())
        .and_then(|c| c.address.as_ref())
        .and_then(|a| a.address.parse::<IpAddr>().ok())
        .ok_or(SdpError::NoAddress)?;
    let mut chosen = None;
    for format in &audio.media_name.formats {
        let Ok(pt) = format.parse::<u8>() else {
            continue;
        };
        let name = sdp
            .get_codec_for_payload_type(pt)
            .ok()
            .map(|c| c.name.to_ascii_lowercase());
        let codec = match (pt, name.as_deref()) {
            (_, Some("opus")) => Codec::Opus,
            (_, Some("pcmu")) | (PCMU_PT, None) => Codec::Pcmu,
            _ => continue,
        };
        chosen = Some((codec, pt));
        break;
    }
    let (codec, payload_type) =
        chosen.ok_or_else(|| SdpError::NoCommonCodec(audio.media_name.formats.join(" ")))?;
    let rtcp_mux = audio.attribute("rtcp-mux").is_some();
    let rtcp_port = audio
        .attribute("rtcp")
        .flatten()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(port.wrapping_add(1));
    let rtp = SocketAddr::new(address, port);
    Ok(RemoteMedia {
        rtp,
        rtcp: if rtcp_mux {
            rtp
        } else {
            SocketAddr::new(address, rtcp_port)
        },
        rtcp_mux,
        codec,
        payload_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_offer_reads_back_as_opus_with_rtcp_mux() {
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let sdp = offer(addr, 7, 1, Codecs::OpusOrPcmu);
        assert!(sdp.contains("a=fmtp:111 useinbandfec=1\r\n"), "{sdp}");
        let media = parse_remote(sdp.as_bytes()).unwrap();
        assert_eq!(
            media,
            RemoteMedia {
                rtp: addr,
                rtcp: addr,
                rtcp_mux: true,
                codec: Codec::Opus,
                payload_type: 111
            }
        );
    }

    #[test]
    fn a_baresip_style_pcmu_answer_uses_port_plus_one_for_rtcp() {
        let answer = "v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
                      m=audio 5004 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
        let media = parse_remote(answer.as_bytes()).unwrap();
        assert_eq!(media.codec, Codec::Pcmu);
        assert_eq!(media.payload_type, 0);
        assert_eq!(media.rtp, "10.0.0.2:5004".parse::<SocketAddr>().unwrap());
        assert_eq!(media.rtcp, "10.0.0.2:5005".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn a_renumbered_opus_and_an_rtcp_attribute_are_followed() {
        let answer = "v=0\r\no=- 1 2 IN IP4 10.0.0.2\r\ns=-\r\nt=0 0\r\n\
                      m=audio 6000 RTP/AVP 96\r\nc=IN IP4 10.0.0.3\r\na=rtpmap:96 opus/48000/2\r\na=rtcp:6100\r\n";
        let media = parse_remote(answer.as_bytes()).unwrap();
        assert_eq!((media.codec, media.payload_type), (Codec::Opus, 96));
        assert_eq!(media.rtcp, "10.0.0.3:6100".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn refusals_and_garbage_are_named() {
        let refused = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(
            parse_remote(refused.as_bytes()),
            Err(SdpError::AudioRefused)
        );
        let g729 = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(
            parse_remote(g729.as_bytes()),
            Err(SdpError::NoCommonCodec("18".into()))
        );
        assert!(matches!(
            parse_remote(b"\xff\xfe garbage"),
            Err(SdpError::Syntax(_))
        ));
        let video = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=video 4000 RTP/AVP 96\r\n";
        assert_eq!(parse_remote(video.as_bytes()), Err(SdpError::NoAudio));
    }

    proptest::proptest! {
        /// A peer's SDP is read or refused, never a panic.
        #[test]
        fn hostile_sdp_never_panics(
            lines in proptest::collection::vec("[a-z]=[ -~]{0,40}", 0..12),
        ) {
            let body = lines.join("\r\n");
            let _ = parse_remote(body.as_bytes());
            let _ = parse_remote(format!("v=0\r\n{body}").as_bytes());
        }
    }
}
