//! The kiosk in the Daily room over SIP (`session.provision = "daily-sip"`),
//! end to end: the real daemon (`run`), the fake Daily REST API and agent
//! start endpoint on 127.0.0.1, and baresip standing in for the room's SIP
//! endpoint. The room is created with dial-in, the bot is started with the
//! SIP URI, the kiosk dials it, both directions carry speech, and the call
//! and the room end with the session. On a kiosk whose microphone hears its
//! loudspeaker (file-backed ALSA devices with a simulated room between
//! them), baresip hears the visitor over its own reply and not itself.

use crate::common;
use crate::daily_support;
use crate::fake_upstream;
use crate::sip_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    Daemon, U1_MS, U2_MS, session_config, session_rows, visitor_clip, wait_session_end, wait_until,
    write_wav,
};
use daily_support::{API_KEY, FakeDaily};
use fake_upstream::FakeUpstream;
use kiosk_gateway::audio::{self, PcmClip, SampleRate};
use sip_support::{Baresip, Script, ScriptedPeer, best_correlation, fixture, write_source};

#[path = "../support/alsa_files.rs"]
mod alsa_files;
#[path = "../support/room_feedback.rs"]
mod room_feedback;
#[path = "../support/room_visitor.rs"]
mod room_visitor;
use room_feedback::RoomThread;
use room_visitor::{cut_in_said, question_then_cut_in, room_audio};

/// A daemon provisioning each session from `fake` with SIP dial-in;
/// `daily` adds keys to `[daily]`, `extra` adds tables.
fn start(dir: &Path, fake: &FakeDaily, mic: &[i16], daily: &str, extra: &str) -> Daemon {
    let input = dir.join("mic.wav");
    write_wav(&input, 16_000, mic);
    let config: PathBuf = session_config(
        dir,
        &input,
        &format!("start_url = \"{}\"", fake.agent_start_url()),
        &format!(
            "[daily]\nbase_url = \"{}\"\n{daily}\n[session]\nprovision = \"daily-sip\"\n\
             idle_timeout = \"5s\"\nready_timeout = \"10s\"\nreconnect_timeout = \"10s\"\n{extra}",
            fake.base_url()
        ),
    );
    Daemon::start(dir, &config, &[("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY)])
}

/// baresip's side: the agent's reply, repeated, as its Opus encoder wants it.
fn baresip_source(dir: &Path) -> PathBuf {
    let reply = audio::read_wav(&fixture("link/reply_48k.wav")).unwrap();
    let path = dir.join("baresip-source.wav");
    write_source(
        &path,
        &reply,
        20,
        Duration::from_millis(500),
        SampleRate::OPUS,
        2,
    );
    path
}

/// The visitor: u1, 4.5 s of room noise, u2.
fn visitor() -> Vec<i16> {
    let noise = visitor_clip(U1_MS.1, U2_MS.0);
    let mut mic = visitor_clip(0, U2_MS.0);
    mic.extend(&noise);
    mic.extend(&noise);
    mic.extend(visitor_clip(U2_MS.0, U2_MS.1 + 800));
    mic
}

fn clip(rate: u32, samples: &[i16]) -> PcmClip {
    PcmClip {
        rate: SampleRate(rate),
        samples: samples.iter().map(|&s| f32::from(s) / 32768.0).collect(),
    }
}

/// 10 ms energy envelope at 8 kHz.
fn envelope(c: &PcmClip) -> Vec<f32> {
    let s = audio::resample_clip(&c.samples, c.rate, SampleRate(8000)).unwrap();
    s.chunks_exact(80)
        .map(|f| f.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect()
}

/// Where `window` of `reference` lies in `recorded` (in 10 ms steps), by
/// the envelopes, then the sample-level correlation there.
fn locate_and_correlate(
    reference: &PcmClip,
    recorded: &PcmClip,
    window: (Duration, Duration),
) -> (f32, i64) {
    let (a, b) = (envelope(reference), envelope(recorded));
    let (from, to) = (
        window.0.as_millis() as usize / 10,
        (window.1.as_millis() as usize / 10).min(a.len()),
    );
    let x = &a[from..to];
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let mx = mean(x);
    let best = (0..b.len().saturating_sub(x.len()))
        .map(|start| {
            let y = &b[start..start + x.len()];
            let my = mean(y);
            let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
            for (p, q) in x.iter().zip(y) {
                xy += (p - mx) * (q - my);
                xx += (p - mx) * (p - mx);
                yy += (q - my) * (q - my);
            }
            (xy / (xx * yy).sqrt().max(1e-9), start)
        })
        .fold((f32::MIN, 0), |best, c| if c.0 > best.0 { c } else { best });
    // Shift the recording so the window lines up at lag 0, then refine.
    let shift_ms = best.1 as i64 * 10 - from as i64 * 10;
    let per_ms = recorded.rate.hz() as i64 / 1000;
    let mut shifted = recorded.samples.clone();
    if shift_ms >= 0 {
        shifted.drain(..((shift_ms * per_ms) as usize).min(shifted.len()));
    } else {
        let pad = vec![0.0; (-shift_ms * per_ms) as usize];
        shifted.splice(0..0, pad);
    }
    let shifted = PcmClip {
        rate: recorded.rate,
        samples: shifted,
    };
    let (c, lag) = best_correlation(reference, &shifted, window, Duration::from_millis(40));
    (c, shift_ms + lag)
}

/// The daemon's speaker so far (48 kHz, mono).
fn speaker(dir: &Path) -> PcmClip {
    clip(48_000, &common::speaker_samples(dir))
}

fn log_field(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let rest = &line[line.find(&format!("{field}="))? + field.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_sip_session_carries_speech_both_ways_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let baresip = Baresip::start(&baresip_source(dir.path()), &["opus.so"]);
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().sip_endpoint = Some(baresip.uri().replace("sip:", ""));
    let upstream = FakeUpstream::start().await;
    let token_file = dir.path().join("sync-token");
    std::fs::write(&token_file, fake_upstream::TOKEN).unwrap();
    let mic = visitor();
    // The kiosk's name in the room is the one the WebVTT fixture's
    // visitor cues carry.
    let d = start(
        dir.path(),
        &fake,
        &mic,
        "transcription = true\nsip_display_name = \"lobby-kiosk\"",
        &format!(
            "[sync]\nurl = \"{}\"\ntoken_file = \"{}\"\ninterval = \"1s\"\n",
            upstream.url,
            token_file.display()
        ),
    );
    let s = wait_session_end(&d, "the session ends", Duration::from_secs(60)).await;
    let log = d.stderr();
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle", "{log}");
    let rows = session_rows(dir.path());
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let room = row.room_name.clone().expect("the session's room");

    // The room was created with dial-in, the bot was told where the kiosk
    // calls, and the room went with the session.
    wait_until("the room is deleted", Duration::from_secs(10), &d, || {
        fake.room_history().1.contains(&room)
    })
    .await;
    {
        let state = fake.state.lock().unwrap();
        let (_, body) = &state.agent_start_bodies[0];
        assert_eq!(body["room_url"], format!("https://example.daily.co/{room}"));
        assert_eq!(body["sip_uri"], baresip.uri().replace("sip:", ""));
        assert_eq!(body["kiosk_id"], "test-kiosk");
        assert_eq!(body["session_id"], row.id.as_str());
        assert!(body["token"].as_str().is_some_and(|t| !t.is_empty()));
    }
    let answered_ms = log_field(&log, "SIP leg answered", "elapsed_ms").expect("answer time");
    println!("INVITE to answered: {answered_ms} ms");
    assert!(
        baresip.log().contains("terminated"),
        "no BYE:\n{}",
        baresip.log()
    );

    // baresip heard the visitor: both utterances, sample-aligned.
    let (decoded, encoded) = baresip.recordings();
    let input = clip(16_000, &mic);
    let u2_at = u64::from(U2_MS.0 + 2 * (U2_MS.0 - U1_MS.1));
    for (name, window) in [
        (
            "u1",
            (Duration::from_millis(1300), Duration::from_millis(3600)),
        ),
        (
            "u2",
            (
                Duration::from_millis(u2_at + 100),
                Duration::from_millis(u2_at + u64::from(U2_MS.1 - U2_MS.0)),
            ),
        ),
    ] {
        let (c, lag) = locate_and_correlate(&input, &decoded, window);
        println!("baresip's recording of the visitor, {name}: correlation {c:.3} at {lag} ms");
        assert!(c >= 0.8, "{name}: correlation {c} at {lag} ms");
    }

    // The kiosk's speaker played what baresip sent.
    let (c, lag) = locate_and_correlate(
        &encoded,
        &speaker(dir.path()),
        (Duration::from_millis(500), Duration::from_millis(2000)),
    );
    println!("the kiosk's speaker against baresip's sending: correlation {c:.3} at {lag} ms");
    assert!(c >= 0.8, "correlation {c} at {lag} ms");
    assert!(row.user_speech_ms > 3500, "{row:?}");

    // Daily transcribed the call from its answer to the session's end;
    // its WebVTT became the session's lines, and they were uploaded.
    let transcripts = fake.transcripts();
    assert_eq!(transcripts.len(), 1, "{log}");
    assert_eq!(transcripts[0].status, "t_finished");
    wait_until(
        "the transcript is stored",
        Duration::from_secs(30),
        &d,
        || common::transcript_lines(dir.path(), &row.id).len() >= 3,
    )
    .await;
    let lines = common::transcript_lines(dir.path(), &row.id);
    let said: Vec<(&str, &str)> = lines
        .iter()
        .map(|(_, role, text)| (role.as_str(), text.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            ("user", "Hello, where is the pharmacy?"),
            ("bot", "It is on the second floor, next to the lifts."),
            ("user", "Thank you!"),
        ]
    );
    wait_until("the lines are synced", Duration::from_secs(30), &d, || {
        upstream.with(|r| r.transcripts.len()) >= 3
    })
    .await;
    assert!(upstream.with(|r| r.transcripts.values().all(|&n| n == 1)));
    assert!(!d.stderr().contains(API_KEY), "the API key reached the log");
}

/// A session against a scripted SIP endpoint: its outcome, the daemon's
/// log, and what the endpoint saw.
async fn scripted_session(
    script: Script,
    extra: &str,
) -> (serde_json::Value, String, sip_support::PeerLog, bool) {
    let dir = tempfile::tempdir().unwrap();
    let peer = ScriptedPeer::start(Script {
        opus: true,
        ..script
    });
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().sip_endpoint = Some(peer.uri());
    let d = start(dir.path(), &fake, &visitor(), "", extra);
    let s = wait_session_end(&d, "the session ends", Duration::from_secs(60)).await;
    // Whatever happened, the room went with the session.
    wait_until("every room is deleted", Duration::from_secs(10), &d, || {
        let (created, deleted) = fake.room_history();
        !created.is_empty() && created == deleted
    })
    .await;
    let log = d.stderr();
    // The failure prompt is 4.6 s of speech; the peer sends only silence.
    let failed = s["recent_sessions"][0]["end_reason"] == "connect_failed";
    if failed {
        common::wait_for_prompt(dir.path(), Duration::from_secs(10)).await;
    }
    let prompt_played = common::loud_samples(&common::speaker_samples(dir.path())) > 48_000;
    drop(d);
    (s, log, peer.finish(), prompt_played)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_fails_the_session_at_once_with_the_prompt() {
    let (s, log, peer, prompt) = scripted_session(
        Script {
            reject: vec![(486, None)],
            ..Script::default()
        },
        "",
    )
    .await;
    assert_eq!(
        s["recent_sessions"][0]["end_reason"], "connect_failed",
        "{log}"
    );
    assert_eq!(peer.count("INVITE"), 1, "486 is not tried again");
    assert!(log.contains("486 busy"), "{log}");
    assert!(prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_not_ready_yet_is_dialled_until_it_answers() {
    let (s, log, peer, prompt) = scripted_session(
        Script {
            reject: vec![(480, Some(1)), (480, Some(1))],
            ..Script::default()
        },
        "",
    )
    .await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle", "{log}");
    assert_eq!(peer.count("INVITE"), 3, "answered on the third try");
    assert_eq!(peer.count("BYE"), 1, "hung up at idle");
    assert!(peer.rtp_received > 200, "{} RTP packets", peer.rtp_received);
    assert!(!prompt, "no failure prompt for a session that worked");
    // The visitor spoke while the endpoint was not ready: the speech held
    // meanwhile leaves paced at twice real time, not in one burst that
    // the endpoint's jitter buffer would mostly throw away.
    let first = &peer.rtp_arrivals[..40];
    let span = first[39].duration_since(first[0]);
    assert!(
        span >= Duration::from_millis(300),
        "40 held packets came in {span:?}: a burst"
    );
    assert!(
        span < Duration::from_millis(650),
        "40 packets took {span:?}: no held speech to drain, or drained at real time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_fails_the_session_at_ready_timeout() {
    let (s, log, peer, prompt) = scripted_session(
        Script {
            ring_forever: true,
            ..Script::default()
        },
        "[sip]\nanswer_timeout = \"2s\"\n",
    )
    .await;
    assert_eq!(
        s["recent_sessions"][0]["end_reason"], "connect_failed",
        "{log}"
    );
    assert!(log.contains("not answered in time"), "{log}");
    assert!(
        peer.count("CANCEL") >= 1,
        "each unanswered INVITE is cancelled"
    );
    assert!(prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_hanging_up_mid_call_is_dialled_again() {
    let (s, log, peer, prompt) = scripted_session(
        Script {
            bye_after: Some(Duration::from_secs(3)),
            ..Script::default()
        },
        "",
    )
    .await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle", "{log}");
    assert!(log.contains("SIP call dropped"), "{log}");
    assert!(log.contains("call restored"), "{log}");
    assert_eq!(peer.count("INVITE"), 2, "dialled again once");
    assert_eq!(peer.count("BYE"), 1, "the second call hung up at idle");
    assert!(!prompt, "no failure prompt for a call restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_seconds_without_rtp_do_not_end_the_call() {
    let (s, log, peer, prompt) = scripted_session(
        Script {
            rtp_first: Duration::from_secs(2),
            rtp_pause: Duration::from_secs(5),
            ..Script::default()
        },
        "",
    )
    .await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle", "{log}");
    assert_eq!(peer.count("INVITE"), 1, "the call held: {log}");
    assert!(!log.contains("SIP call dropped"), "{log}");
    assert!(!prompt);
}

/// The room's echo of what baresip says through the kiosk's loudspeaker,
/// and the visitor cutting into it: the daemon on file-backed ALSA devices
/// (tests/support/room_feedback.rs between them) dialled into baresip,
/// which answers with a long reply, said again and again. Returns what
/// baresip decoded from the kiosk, the visitor's second utterance at the
/// level the microphone heard it (16 kHz), and the logs for a failure.
async fn sip_call_in_the_room(echo_cancel: bool) -> (PcmClip, PcmClip, String) {
    let dir = tempfile::tempdir().unwrap();
    let (alsa_path, _) = alsa_files::file_devices(dir.path());
    alsa_files::mkfifo(&dir.path().join("mic.raw"));
    alsa_files::mkfifo(&dir.path().join("speaker.raw"));

    let reply = audio::read_wav(Path::new(ROOM_REPLY)).unwrap();
    let source = dir.path().join("baresip-source.wav");
    write_source(
        &source,
        &reply,
        4,
        Duration::from_millis(500),
        SampleRate::OPUS,
        2,
    );
    let baresip = Baresip::start(&source, &["opus.so"]);
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().sip_endpoint = Some(baresip.uri().replace("sip:", ""));

    let u2 = visitor_clip(U2_MS.0, U2_MS.1);
    let (parts, gain) = question_then_cut_in(
        &reply.samples,
        &visitor_clip(U1_MS.0, U1_MS.1),
        &u2,
        Duration::from_secs(3),
    );
    let room = RoomThread::start(dir.path(), parts);

    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kiosk]\nid = \"test-kiosk\"\n{}\
             [agent]\nstun_urls = []\nudp_bind = \"127.0.0.1:0\"\nstart_url = \"{}\"\n\
             [daily]\nbase_url = \"{}\"\n\
             [session]\nprovision = \"daily-sip\"\nidle_timeout = \"30s\"\n\
             ready_timeout = \"10s\"\n\
             [store]\npath = \"kiosk.db\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\n\
             [log]\ntarget = \"stderr\"\nlevel = \"info\"\n",
            room_audio(echo_cancel),
            fake.agent_start_url(),
            fake.base_url()
        ),
    )
    .unwrap();
    let d = Daemon::start(
        dir.path(),
        &config,
        &[
            ("ALSA_CONFIG_PATH", &alsa_path),
            ("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY),
        ],
    );

    // Talk, then listen to the echo alone for a while; the daemon's stop
    // hangs the call up, and baresip closes its recordings.
    let u2_len = Duration::from_millis(u64::from(U2_MS.1 - U2_MS.0));
    let cut_in = cut_in_said(&room, u2_len, ECHO_ALONE, Duration::from_secs(60)).await;
    d.signal("TERM");
    let hung_up = Instant::now() + Duration::from_secs(10);
    while !baresip.log().contains("terminated") && Instant::now() < hung_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = format!(
        "echo_cancel {echo_cancel}: the visitor cut in: {}; room wrote {} s\nbaresip:\n{}\ndaemon:\n{}",
        cut_in,
        room.written() / 48_000,
        baresip.log(),
        d.stderr()
    );
    let (decoded, _) = baresip.recordings();
    drop(d);
    room.stop();
    let mut said = clip(16_000, &u2);
    said.samples.iter_mut().for_each(|s| *s *= gain);
    (decoded, said, log)
}

/// The reply baresip says through the kiosk's speaker: a 10 s recording
/// of a bot's answer, with its pauses.
const ROOM_REPLY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/audio/bot_reference_16k.wav"
);
/// How long the call goes on after the visitor's second utterance, the
/// echo alone on the line.
const ECHO_ALONE: Duration = Duration::from_secs(5);

/// Where in baresip's recording the cut-in is looked for.
const CUT_IN_WINDOW: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_millis(1400));
/// The echo alone at the call's end: from 3.5 s to 0.5 s before it.
const ECHO_TAIL: (Duration, Duration) = (Duration::from_millis(3500), Duration::from_millis(500));

/// RMS level (dBFS) of `c` from `from` to `to` before its end.
fn tail_level(c: &PcmClip, from: Duration, to: Duration) -> f32 {
    let at = |d: Duration| {
        let ms = audio::Millis(d.as_millis() as u32);
        c.samples.len().saturating_sub(c.rate.samples_in(ms))
    };
    let part = &c.samples[at(from)..at(to)];
    audio::Dbfs::rms(part).0
}

/// The 20 ms frames of `said` with speech in them (above -45 dBFS), and
/// the offsets (ms) of those that `heard` does not have `at_ms` later
/// within 6 dB: words a suppressor or gate cut out of double talk.
fn frames_lost(said: &PcmClip, heard: &PcmClip, at_ms: i64) -> (usize, Vec<i64>) {
    let level = |c: &PcmClip, ms: i64| -> Option<f32> {
        let per_ms = c.rate.hz() as i64 / 1000;
        let (from, to) = (ms * per_ms, (ms + 20) * per_ms);
        (from >= 0 && to as usize <= c.samples.len())
            .then(|| audio::Dbfs::rms(&c.samples[from as usize..to as usize]).0)
    };
    let speech: Vec<(i64, f32)> = (0..)
        .step_by(20)
        .map_while(|ms| level(said, ms).map(|l| (ms, l)))
        .filter(|&(_, l)| l >= -45.0)
        .collect();
    let lost = speech
        .iter()
        .filter(|&&(ms, l)| !level(heard, ms + at_ms).is_some_and(|h| h >= l - 6.0))
        .map(|&(ms, _)| ms)
        .collect();
    (speech.len(), lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_kiosk_loudspeaker_the_sip_peer_hears_the_visitor_and_not_itself() {
    let (decoded, u2, log) = sip_call_in_the_room(true).await;
    // The visitor's words said over the reply reached the peer whole.
    let (c, lag) = locate_and_correlate(&u2, &decoded, CUT_IN_WINDOW);
    // The last seconds of the call: the reply's echo alone.
    let echo_db = tail_level(&decoded, ECHO_TAIL.0, ECHO_TAIL.1);
    let (speech, lost) = frames_lost(&u2, &decoded, lag);
    println!(
        "with the canceller: the visitor over the reply, correlation {c:.3} at {lag} ms, \
         {} of {speech} speech frames more than 6 dB down (at {lost:?} ms); \
         the echo alone at {echo_db:.1} dBFS",
        lost.len()
    );
    assert!(c >= 0.65, "correlation {c} at {lag} ms\n{log}");
    // AEC3's suppressor opens over about 80 ms when the visitor starts
    // over the reply: the start of each word after a pause comes through
    // faded in (4 to 11 of 68 frames in ten runs), the rest whole.
    assert!(
        lost.len() * 5 <= speech,
        "{} of {speech} frames lost\n{log}",
        lost.len()
    );

    let (decoded, u2, log_off) = sip_call_in_the_room(false).await;
    let raw_db = tail_level(&decoded, ECHO_TAIL.0, ECHO_TAIL.1);
    let (c0, lag0) = locate_and_correlate(&u2, &decoded, CUT_IN_WINDOW);
    println!(
        "without it: the visitor over the reply, correlation {c0:.3} at {lag0} ms, \
         {} speech frames more than 6 dB down; the echo alone at {raw_db:.1} dBFS",
        frames_lost(&u2, &decoded, lag0).1.len()
    );
    assert!(
        raw_db > -45.0,
        "without the canceller the peer should have heard itself: {raw_db} dBFS\n{log_off}"
    );
    assert!(
        echo_db < raw_db - 25.0,
        "the peer heard its own voice at {echo_db} dBFS ({raw_db} dBFS without the canceller)\n{log}"
    );
}
