//! `kiosk-gateway dial` against baresip (a SIP user agent nobody here
//! wrote) on 127.0.0.1, and against a scripted peer for the faults:
//! rejections, no answer, the peer hanging up, RTP that stops, garbage,
//! and a digest challenge.

use crate::sip_support;

use std::path::Path;
use std::time::Duration;

use kiosk_gateway::audio::{self, PcmClip, SampleRate};
use sip_support::{Baresip, Script, ScriptedPeer, best_correlation, dial, fixture, write_source};

/// The visitor: 16 kHz mono, "Hello there, I would like some help please"
/// from 1000 ms to 3730 ms, a second utterance from 5230 ms.
fn visitor() -> std::path::PathBuf {
    fixture("audio/multi_utterance_16k.wav")
}

/// baresip's side of the call: the agent's reply, repeated, for Opus.
fn baresip_source(dir: &Path, times: usize) -> (std::path::PathBuf, PcmClip) {
    baresip_source_at(dir, times, SampleRate::OPUS, 2)
}

fn baresip_source_at(
    dir: &Path,
    times: usize,
    rate: SampleRate,
    channels: u16,
) -> (std::path::PathBuf, PcmClip) {
    let reply = audio::read_wav(&fixture("link/reply_48k.wav")).unwrap();
    let path = dir.join("baresip-source.wav");
    write_source(
        &path,
        &reply,
        times,
        Duration::from_millis(500),
        rate,
        channels,
    );
    let written = audio::read_wav(&path).unwrap();
    (path, written)
}

fn field<'a>(summary: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    path.split('.').fold(summary, |v, k| &v[k])
}

#[test]
fn a_call_to_baresip_carries_speech_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (source, played) = baresip_source(dir.path(), 10);
    let baresip = Baresip::start(&source, &["opus.so", "g711.so"]);
    let output = dir.path().join("heard.wav");
    let run = dial(
        &baresip.uri(),
        &visitor(),
        Some(&output),
        &["--seconds", "6"],
    );
    assert!(
        run.success,
        "dial failed: {}\n{}",
        run.stderr,
        baresip.log()
    );
    let s = run.summary.unwrap();
    assert_eq!(s["answered"], true);
    assert_eq!(s["codec"], "opus");
    assert_eq!(s["payload_type"], 111);
    assert_eq!(s["ended_by"], "local");
    assert_eq!(s["bye_sent"], true);
    let sent = field(&s, "rtp.packets_sent").as_u64().unwrap();
    let received = field(&s, "rtp.packets_received").as_u64().unwrap();
    // 6 s of 20 ms packets each way.
    assert!((295..=305).contains(&sent), "{sent} sent");
    assert!(received >= 280, "{received} received");
    assert_eq!(field(&s, "rtp.packets_lost"), 0);
    assert_eq!(field(&s, "rtp.packets_foreign"), 0);
    assert!(field(&s, "rtp.rtcp_sent").as_u64().unwrap() >= 1);
    let answer_ms = s["invite_to_answer_ms"].as_u64().unwrap();
    // 8 to 57 ms on an idle loopback; baresip itself is slow to answer under load.
    assert!(answer_ms < 3000, "INVITE to 200 OK took {answer_ms} ms");
    assert!(
        baresip.log().contains("terminated"),
        "baresip did not see the BYE:\n{}",
        baresip.log()
    );

    // What baresip decoded of us is our speech, sample-aligned.
    let (decoded, encoded) = baresip.recordings();
    let input = audio::read_wav(&visitor()).unwrap();
    let (ours, lag) = best_correlation(
        &input,
        &decoded,
        (Duration::from_millis(1000), Duration::from_millis(3700)),
        Duration::from_millis(500),
    );
    println!("baresip's recording of our input: correlation {ours:.3} at {lag} ms");
    assert!(ours >= 0.8, "correlation {ours} (lag {lag} ms)");

    // What we recorded is what baresip sent.
    let heard = audio::read_wav(&output).unwrap();
    assert_eq!(heard.rate, input.rate);
    let (theirs, lag) = best_correlation(
        &encoded,
        &heard,
        (Duration::from_millis(500), Duration::from_millis(2000)),
        Duration::from_millis(600),
    );
    println!("our recording of baresip: correlation {theirs:.3} at {lag} ms");
    assert!(theirs >= 0.8, "correlation {theirs} (lag {lag} ms)");
    // And baresip sent the file it was given.
    let (source_match, _) = best_correlation(
        &played,
        &encoded,
        (Duration::from_millis(100), Duration::from_millis(1500)),
        Duration::from_millis(300),
    );
    assert!(
        source_match >= 0.8,
        "baresip's source vs its recording: {source_match}"
    );
}

#[test]
fn pcmu_is_used_when_the_peer_has_no_opus() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = baresip_source_at(dir.path(), 10, SampleRate(8000), 1);
    let baresip = Baresip::start(&source, &["g711.so"]);
    let output = dir.path().join("heard.wav");
    let run = dial(
        &baresip.uri(),
        &visitor(),
        Some(&output),
        &["--seconds", "4"],
    );
    assert!(
        run.success,
        "dial failed: {}\n{}",
        run.stderr,
        baresip.log()
    );
    let s = run.summary.unwrap();
    assert_eq!(s["codec"], "pcmu");
    assert_eq!(s["payload_type"], 0);
    assert_eq!(field(&s, "rtp.packets_lost"), 0);
    let (decoded, encoded) = baresip.recordings();
    let input = audio::read_wav(&visitor()).unwrap();
    let (ours, _) = best_correlation(
        &input,
        &decoded,
        (Duration::from_millis(1000), Duration::from_millis(3700)),
        Duration::from_millis(500),
    );
    println!("PCMU: baresip's recording of our input: correlation {ours:.3}");
    assert!(ours >= 0.8, "correlation {ours}");
    let heard = audio::read_wav(&output).unwrap();
    let (theirs, _) = best_correlation(
        &encoded,
        &heard,
        (Duration::from_millis(500), Duration::from_millis(2000)),
        Duration::from_millis(600),
    );
    println!("PCMU: our recording of baresip: correlation {theirs:.3}");
    assert!(theirs >= 0.8, "correlation {theirs}");
}

#[test]
fn baresip_hanging_up_is_reported_as_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    // baresip ends its call when its source file ends: about 2 s here.
    let (source, _) = baresip_source(dir.path(), 1);
    let baresip = Baresip::start(&source, &["opus.so"]);
    let run = dial(&baresip.uri(), &visitor(), None, &["--seconds", "8"]);
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["ended_by"], "peer");
    assert_eq!(s["bye_sent"], false);
    let call_ms = s["call_ms"].as_u64().unwrap();
    assert!(call_ms < 5000, "the call lasted {call_ms} ms");
}

#[test]
fn busy_is_a_clear_error() {
    let peer = ScriptedPeer::start(Script {
        reject: vec![(486, None)],
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--seconds", "2"]);
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("error: call failed after 1 attempt: 486 busy"),
        "{}",
        run.stderr
    );
    let log = peer.finish();
    assert_eq!(log.count("INVITE"), 1);
    // The failure was acknowledged.
    assert_eq!(log.count("ACK"), 1);
}

#[test]
fn temporarily_unavailable_is_tried_again_after_retry_after() {
    let peer = ScriptedPeer::start(Script {
        reject: vec![(480, Some(1)), (480, Some(1))],
        rtp_first: Duration::from_secs(60),
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--seconds", "2"]);
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["attempts"], 3);
    assert!(run.elapsed >= Duration::from_secs(4), "{:?}", run.elapsed);
    let log = peer.finish();
    assert_eq!(log.count("INVITE"), 3);
    assert!(log.rtp_received >= 90, "{} RTP packets", log.rtp_received);

    // With no retries left the 480 is the answer.
    let peer = ScriptedPeer::start(Script {
        reject: vec![(480, Some(1)), (503, Some(1))],
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--retries", "1"]);
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("after 2 attempts: 503 service unavailable, retry after 1 s"),
        "{}",
        run.stderr
    );
}

#[test]
fn other_rejections_map_to_their_meaning() {
    for (code, text) in [
        (404, "404 not found"),
        (603, "603 declined"),
        (403, "403 Scripted"),
    ] {
        let peer = ScriptedPeer::start(Script {
            reject: vec![(code, None)],
            ..Script::default()
        });
        let run = dial(&peer.uri(), &visitor(), None, &[]);
        assert!(!run.success);
        assert!(run.stderr.contains(text), "{code}: {}", run.stderr);
    }
}

#[test]
fn a_call_that_rings_too_long_is_cancelled() {
    let peer = ScriptedPeer::start(Script {
        ring_forever: true,
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--answer-timeout", "2"]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("not answered in time (cancelled)"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(6), "{:?}", run.elapsed);
    let log = peer.finish();
    assert_eq!(log.count("CANCEL"), 1);
    // The 487 that ends the INVITE was acknowledged.
    assert_eq!(log.count("ACK"), 1);
}

#[test]
fn a_peer_that_never_answers_is_no_response() {
    let peer = ScriptedPeer::start(Script {
        mute: true,
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--answer-timeout", "3"]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("no response from the peer"),
        "{}",
        run.stderr
    );
    let log = peer.finish();
    // INVITE at 0, 0.5, 1.5 s (timer A doubling), nothing after 3 s.
    assert_eq!(log.count("INVITE"), 3, "{:?}", log.requests.len());
    assert_eq!(log.count("CANCEL"), 0);
}

#[test]
fn a_peer_bye_mid_call_ends_the_call() {
    let peer = ScriptedPeer::start(Script {
        bye_after: Some(Duration::from_secs(2)),
        rtp_first: Duration::from_secs(60),
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--seconds", "8"]);
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["ended_by"], "peer");
    assert_eq!(s["bye_sent"], false);
    assert!(s["call_ms"].as_u64().unwrap() < 3000);
    let log = peer.finish();
    assert_eq!(log.count("BYE"), 0);
}

#[test]
fn rtp_that_stops_for_five_seconds_is_counted_and_the_call_goes_on() {
    let peer = ScriptedPeer::start(Script {
        rtp_first: Duration::from_secs(1),
        rtp_pause: Duration::from_secs(5),
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--seconds", "8"]);
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["ended_by"], "local");
    assert_eq!(field(&s, "rtp.gaps"), 1);
    let gap = field(&s, "rtp.longest_gap_ms").as_u64().unwrap();
    assert!((4900..=5300).contains(&gap), "gap {gap} ms");
    // Sequence numbers run on through the pause: nothing was lost.
    assert_eq!(field(&s, "rtp.packets_lost"), 0);
    assert!(s["call_ms"].as_u64().unwrap() >= 7900);
    assert_eq!(peer.finish().count("BYE"), 1);

    // Past --media-timeout the call is hung up.
    let peer = ScriptedPeer::start(Script {
        rtp_first: Duration::from_secs(1),
        rtp_pause: Duration::from_secs(30),
        ..Script::default()
    });
    let run = dial(
        &peer.uri(),
        &visitor(),
        None,
        &["--seconds", "8", "--media-timeout", "2"],
    );
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["ended_by"], "media_timeout");
    let call_ms = s["call_ms"].as_u64().unwrap();
    assert!((2800..4000).contains(&call_ms), "call {call_ms} ms");
    assert_eq!(peer.finish().count("BYE"), 1);
}

#[test]
fn garbage_on_the_sip_and_rtp_ports_is_counted_not_fatal() {
    let peer = ScriptedPeer::start(Script {
        garbage: true,
        rtp_first: Duration::from_secs(60),
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--seconds", "3"]);
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["ended_by"], "local");
    // Five of the six SIP datagrams are garbage (one is a keep-alive);
    // the BYE for another call is answered 481 and counted too.
    assert!(s["sip_ignored"].as_u64().unwrap() >= 4, "{s}");
    // Six datagrams and one foreign payload type on the RTP port; the
    // keep-alive-looking one is not RTP either.
    assert!(
        field(&s, "rtp.packets_invalid").as_u64().unwrap() >= 6,
        "{s}"
    );
    assert!(field(&s, "rtp.packets_received").as_u64().unwrap() >= 140);
    let log = peer.finish();
    assert_eq!(log.count("BYE"), 1);
}

#[test]
fn a_digest_challenge_is_answered_and_the_password_stays_out_of_the_logs() {
    let peer = ScriptedPeer::start(Script {
        challenge: Some(("kiosk".into(), "abc123".into())),
        rtp_first: Duration::from_secs(60),
        ..Script::default()
    });
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"));
    let out = command
        .args(["dial", &peer.uri(), "--input"])
        .arg(format!("wav:{}", visitor().display()))
        .args(["--seconds", "1", "--user", "kiosk-7", "--json"])
        .env("KIOSK_GATEWAY_SIP_PASSWORD", "s3cret-pass")
        .env("RUST_LOG", "trace")
        .env_remove("KIOSK_GATEWAY_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("s3cret-pass") && !stdout.contains("s3cret-pass"));
    let log = peer.finish();
    assert_eq!(log.count("INVITE"), 2);
    let auth = log.authorization.expect("second INVITE authorized");
    let value = |key: &str| -> String {
        let start = auth.find(&format!("{key}=")).unwrap() + key.len() + 1;
        auth[start..]
            .trim_start_matches('"')
            .split(['"', ','])
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(value("username"), "kiosk-7");
    assert_eq!(value("realm"), "kiosk");
    let uri = value("uri");
    let hex = |s: String| format!("{:x}", md5::compute(s));
    let ha1 = hex("kiosk-7:kiosk:s3cret-pass".to_owned());
    let ha2 = hex(format!("INVITE:{uri}"));
    assert_eq!(value("response"), hex(format!("{ha1}:abc123:{ha2}")));
}

#[test]
fn a_bad_uri_or_input_fails_before_dialing() {
    let run = dial("sip:", &visitor(), None, &[]);
    assert!(!run.success);
    assert!(run.stderr.contains("not a SIP URI"), "{}", run.stderr);
    let run = dial(
        "sip:room@127.0.0.1:9",
        Path::new("/nonexistent.wav"),
        None,
        &[],
    );
    assert!(!run.success);
    assert!(
        run.stderr.contains("input WAV /nonexistent.wav"),
        "{}",
        run.stderr
    );
}

#[test]
fn session_timers_and_a_re_invite_from_the_peer_do_not_break_the_call() {
    let peer = ScriptedPeer::start(Script {
        session_expires: Some("90;refresher=uas"),
        reinvite_after: Some(Duration::from_secs(1)),
        rtp_first: Duration::from_secs(60),
        ..Script::default()
    });
    let run = dial(&peer.uri(), &visitor(), None, &["--seconds", "3"]);
    assert!(run.success, "{}", run.stderr);
    let s = run.summary.unwrap();
    assert_eq!(s["session_expires_s"], 90);
    assert_eq!(s["ended_by"], "local");
    assert!(field(&s, "rtp.packets_received").as_u64().unwrap() >= 140);
    let log = peer.finish();
    let invite = log
        .requests
        .iter()
        .find(|r| r.starts_with("INVITE "))
        .unwrap();
    let ok = log
        .requests
        .iter()
        .find(|r| r.starts_with("SIP/2.0 200") && r.contains("CSeq: 2 INVITE"))
        .expect("the re-INVITE was answered 200");
    // The same SDP, version and all: nothing changed on our side.
    assert_eq!(ok.split("\r\n\r\n").nth(1), invite.split("\r\n\r\n").nth(1));
    assert!(ok.contains("Session-Expires: 90;refresher=uac"), "{ok}");
    assert_eq!(log.count("BYE"), 1);
}
