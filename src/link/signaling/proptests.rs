//! Hostile SDP answers: any text, and SDP-shaped text with random lines,
//! goes through the gateway's own check and the WebRTC stack's parser
//! (what `set_remote_description` is given) without panicking. Cases: 256
//! by default, `PROPTEST_CASES=100000` for the full run.

use proptest::prelude::*;
use webrtc::peer_connection::RTCSessionDescription;

use super::check_answer_sdp;

fn sdp_line() -> impl Strategy<Value = String> {
    let kinds = prop::sample::select(vec![
        "v=", "o=", "s=", "t=", "c=", "m=", "a=", "b=", "i=", "k=", "z=", "e=", "x=", "",
    ]);
    let values = prop_oneof![
        Just("0".to_string()),
        Just("- 1 1 IN IP4 127.0.0.1".to_string()),
        Just("audio 9 UDP/TLS/RTP/SAVPF 111".to_string()),
        Just("application 9 UDP/DTLS/SCTP webrtc-datachannel".to_string()),
        Just("rtpmap:111 opus/48000/2".to_string()),
        Just("fingerprint:sha-256 AB:CD".to_string()),
        Just("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".to_string()),
        Just("group:BUNDLE 0 1".to_string()),
        Just("mid:0".to_string()),
        Just("ice-ufrag:x".to_string()),
        ".{0,60}",
    ];
    (kinds, values).prop_map(|(k, v)| format!("{k}{v}"))
}

proptest! {
    #[test]
    fn any_text_as_an_answer_is_refused_or_parsed_without_panicking(sdp in ".{0,2000}") {
        let _ = check_answer_sdp("test", &sdp);
        let _ = RTCSessionDescription::answer(sdp);
    }

    #[test]
    fn sdp_shaped_answers_parse_without_panicking(
        lines in prop::collection::vec(sdp_line(), 0..40),
        crlf in any::<bool>(),
    ) {
        let sdp = lines.join(if crlf { "\r\n" } else { "\n" });
        let _ = check_answer_sdp("test", &sdp);
        let _ = RTCSessionDescription::answer(sdp);
    }
}
