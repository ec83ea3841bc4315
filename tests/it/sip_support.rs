//! What the `dial` tests call: baresip (Debian's `baresip-core`) as the
//! real SIP peer, a scripted UDP peer for the faults baresip will not
//! produce, and the correlation that says two recordings are the same
//! speech.

#![allow(dead_code)] // each test file uses its own part

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiosk_gateway::audio::{self, PcmClip, SampleRate};
use serde_json::Value;

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

/// A UDP port free right now on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The outcome of one `kiosk-gateway dial`.
pub struct DialRun {
    pub success: bool,
    pub summary: Option<Value>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `kiosk-gateway dial URI --input wav:INPUT [--output wav:OUTPUT] ARGS --json`.
pub fn dial(uri: &str, input: &Path, output: Option<&Path>, args: &[&str]) -> DialRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"));
    command
        .arg("dial")
        .arg(uri)
        .arg("--input")
        .arg(format!("wav:{}", input.display()))
        .args(args)
        .arg("--json")
        .env_remove("KIOSK_GATEWAY_CONFIG")
        .env("RUST_LOG", "kiosk_gateway=debug");
    if let Some(output) = output {
        command
            .arg("--output")
            .arg(format!("wav:{}", output.display()));
    }
    let started = Instant::now();
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout).ok();
    if let Some(s) = &summary {
        println!("{}", serde_json::to_string_pretty(s).unwrap());
    }
    eprintln!("{stderr}");
    DialRun {
        success: out.status.success(),
        summary,
        stderr,
        elapsed: started.elapsed(),
    }
}

// ----- baresip -----

/// baresip on 127.0.0.1 answering every call at once, playing `source`
/// and recording both directions with its sndfile module.
pub struct Baresip {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Baresip {
    /// `source`: what baresip sends (48 kHz stereo, as its Opus encoder
    /// runs; aufile refuses any other channel count). `codecs`: the codec
    /// modules to load (`opus.so`, `g711.so`).
    pub fn start(source: &Path, codecs: &[&str]) -> Self {
        assert!(
            Path::new("/usr/bin/baresip").exists(),
            "baresip is not installed: apt-get install baresip-core (see .ci/setup)"
        );
        // baresip also binds TCP on the port and TLS next to it; on a busy
        // machine one of those may be taken by then: try another port.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(source, codecs) {
                Ok(baresip) => return baresip,
                Err(log) => last = log,
            }
        }
        panic!("baresip did not start:\n{last}");
    }

    fn try_start(source: &Path, codecs: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let rec = dir.path().join("rec");
        std::fs::create_dir(&rec).unwrap();
        let modules: String = codecs.iter().map(|m| format!("module\t\t{m}\n")).collect();
        let config = format!(
            "poll_method\t\tepoll\n\
             sip_listen\t\t127.0.0.1:{port}\n\
             net_interface\t\t127.0.0.1\n\
             audio_source\t\taufile,{source}\n\
             audio_buffer\t\t20-160\n\
             jitter_buffer_delay\t1-10\n\
             rtp_timeout\t\t0\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             {modules}\
             module\t\taufile.so\n\
             module\t\tsndfile.so\n\
             module_tmp\t\tuuid.so\n\
             module_tmp\t\taccount.so\n\
             module_app\t\tmenu.so\n\
             snd_path\t\t{rec}\n\
             opus_bitrate\t\t32000\n",
            source = source.display(),
            rec = rec.display(),
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(
            dir.path().join("accounts"),
            "<sip:room@127.0.0.1>;regint=0;answermode=auto\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("contacts"), "").unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut baresip = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !baresip.log().contains("baresip is ready") {
            let exited = baresip.child.try_wait().ok().flatten().is_some();
            if exited
                || baresip.log().contains("Address already in use")
                || Instant::now() >= deadline
            {
                return Err(baresip.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(baresip)
    }

    pub fn uri(&self) -> String {
        format!("sip:room@127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The call's recordings once baresip has closed them: what it decoded
    /// from us (`-dec.wav`) and what it encoded for us (`-enc.wav`).
    pub fn recordings(&self) -> (PcmClip, PcmClip) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut dec = None;
            let mut enc = None;
            for entry in std::fs::read_dir(self.dir.path().join("rec")).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let clip = audio::read_wav(&path)
                    .ok()
                    .filter(|c| !c.samples.is_empty());
                if name.ends_with("-dec.wav") {
                    dec = clip;
                } else if name.ends_with("-enc.wav") {
                    enc = clip;
                }
            }
            if let (Some(dec), Some(enc)) = (dec, enc) {
                return (dec, enc);
            }
            assert!(
                Instant::now() < deadline,
                "baresip wrote no recordings:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clip` repeated `times` with `pause` of silence after each, written as
/// 16-bit PCM in the codec's own format: baresip's aufile refuses any
/// other (Opus: 48 kHz stereo; PCMU: 8 kHz mono).
pub fn write_source(
    path: &Path,
    clip: &PcmClip,
    times: usize,
    pause: Duration,
    rate: SampleRate,
    channels: u16,
) {
    let mono = audio::resample_clip(&clip.samples, clip.rate, rate).unwrap();
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate.hz(),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    let silence = (pause.as_secs_f64() * f64::from(rate.hz())) as usize;
    for _ in 0..times {
        for &s in mono.iter().chain(std::iter::repeat_n(&0.0, silence)) {
            let v = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
            for _ in 0..channels {
                writer.write_sample(v).unwrap();
            }
        }
    }
    writer.finalize().unwrap();
}

// ----- correlation -----

/// Normalised correlation of `reference[window]` against `recorded`,
/// at the best lag within `max_lag` either way; both are brought to
/// 8 kHz first. Returns (correlation, lag in ms: positive when `recorded`
/// is late).
pub fn best_correlation(
    reference: &PcmClip,
    recorded: &PcmClip,
    window: (Duration, Duration),
    max_lag: Duration,
) -> (f32, i64) {
    const RATE: SampleRate = SampleRate(8000);
    let a = audio::resample_clip(&reference.samples, reference.rate, RATE).unwrap();
    let b = audio::resample_clip(&recorded.samples, recorded.rate, RATE).unwrap();
    let at = |d: Duration| (d.as_secs_f64() * 8000.0) as usize;
    let (start, end) = (at(window.0), at(window.1).min(a.len()));
    let x = &a[start..end];
    let xx: f32 = x.iter().map(|v| v * v).sum();
    let max_lag = at(max_lag) as i64;
    let score = |lag: i64| -> f32 {
        let from = start as i64 + lag;
        if from < 0 || from as usize + x.len() > b.len() {
            return f32::MIN;
        }
        let y = &b[from as usize..from as usize + x.len()];
        let xy: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let yy: f32 = y.iter().map(|q| q * q).sum();
        xy / (xx * yy).sqrt().max(1e-9)
    };
    // Coarse steps of 0.5 ms, then every sample around the best.
    let coarse = (-max_lag..=max_lag)
        .step_by(4)
        .map(|lag| (score(lag), lag))
        .fold((f32::MIN, 0), |best, c| if c.0 > best.0 { c } else { best });
    let fine = (coarse.1 - 4..=coarse.1 + 4)
        .map(|lag| (score(lag), lag))
        .fold(coarse, |best, c| if c.0 > best.0 { c } else { best });
    (fine.0, fine.1 * 1000 / 8000)
}

// ----- a scripted peer -----

/// How the scripted peer answers INVITEs.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// Final answers to the first INVITEs, in order, with Retry-After;
    /// later INVITEs are answered 200.
    pub reject: Vec<(u16, Option<u32>)>,
    /// Ring (180) and never answer.
    pub ring_forever: bool,
    /// Say nothing at all.
    pub mute: bool,
    /// Challenge the first INVITE with this digest realm and nonce.
    pub challenge: Option<(String, String)>,
    /// Once answered, send PCMU for this long, pause `rtp_pause`, then
    /// send again until the call ends.
    pub rtp_first: Duration,
    pub rtp_pause: Duration,
    /// Send BYE this long after answering.
    pub bye_after: Option<Duration>,
    /// Throw garbage at the caller's SIP and RTP ports once answered.
    pub garbage: bool,
    /// A Session-Expires the 200 carries.
    pub session_expires: Option<&'static str>,
    /// Send a re-INVITE (its SDP again, and a session refresh) this long
    /// after answering.
    pub reinvite_after: Option<Duration>,
    /// Answer with Opus (payload type 111, 20 ms silence frames) instead
    /// of PCMU, as a Daily room's endpoint does for an Opus-only caller.
    pub opus: bool,
}

/// What the scripted peer saw.
#[derive(Debug, Default)]
pub struct PeerLog {
    pub requests: Vec<String>,
    /// BYEs the peer sent (one call at most is hung up by the peer).
    pub byes_sent: u32,
    pub authorization: Option<String>,
    pub rtp_received: usize,
    /// When each RTP packet was read (within the peer's 5 ms poll).
    pub rtp_arrivals: Vec<Instant>,
    pub garbage_sent: usize,
}

impl PeerLog {
    pub fn count(&self, method: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")))
            .count()
    }
}

pub struct ScriptedPeer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<PeerLog>>,
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A response copying the request's Via, From, To (tagged), Call-ID and CSeq.
fn response(request: &str, code: u16, reason: &str, extra: &str, body: &str) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in request.lines() {
        if line.to_ascii_lowercase().starts_with("via:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        out.push_str(&format!(
            "{name}: {}\r\n",
            header(request, name).unwrap_or("")
        ));
    }
    let to = header(request, "To").unwrap_or("");
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag=peer1\r\n"));
    }
    out.push_str(extra);
    if body.is_empty() {
        out.push_str("Content-Length: 0\r\n\r\n");
    } else {
        out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    out.into_bytes()
}

/// The caller's RTP address from its SDP offer.
fn offered_rtp(invite: &str) -> Option<SocketAddr> {
    let ip = invite
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = invite
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

impl ScriptedPeer {
    pub fn start(script: Script) -> Self {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sip.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || run_peer(sip, script, stopped));
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn uri(&self) -> String {
        format!("sip:room@{}", self.addr)
    }

    pub fn finish(mut self) -> PeerLog {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn run_peer(sip: UdpSocket, script: Script, stop: Arc<AtomicBool>) -> PeerLog {
    sip.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_nonblocking(true).unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let format = if script.opus {
        "111\r\na=rtpmap:111 opus/48000/2"
    } else {
        "0\r\na=rtpmap:0 PCMU/8000"
    };
    let answer = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP {format}\r\na=sendrecv\r\n"
    );
    let mut log = PeerLog::default();
    let mut rejections = script.reject.clone().into_iter();
    let mut caller: Option<SocketAddr> = None;
    let mut caller_rtp: Option<SocketAddr> = None;
    let mut invite_text = String::new();
    let mut answered_at: Option<Instant> = None;
    let mut bye_sent = false;
    let mut garbage_done = false;
    let mut reinvite_sent = false;
    let mut challenged = false;
    let (mut seq, mut ts, mut next_rtp) = (1u16, 0u32, Instant::now());
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = sip.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            log.requests.push(text.clone());
            caller = Some(from);
            if script.mute {
                continue;
            }
            let method = text.split(' ').next().unwrap_or("").to_owned();
            if text.starts_with("SIP/2.0 200") && header(&text, "CSeq") == Some("2 INVITE") {
                let ack = in_dialog(&invite_text, "ACK", 2, "z9hG4bKpeerack", &sip, "", "");
                sip.send_to(ack.as_bytes(), from).unwrap();
                continue;
            }
            match method.as_str() {
                // A new call once the last one was hung up by us.
                "INVITE" if answered_at.is_none() || bye_sent => {
                    bye_sent = false;
                    answered_at = None;
                    sip.send_to(&response(&text, 100, "Trying", "", ""), from)
                        .unwrap();
                    if let Some((realm, nonce)) = &script.challenge
                        && !challenged
                    {
                        challenged = true;
                        let extra = format!(
                            "WWW-Authenticate: Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5\r\n"
                        );
                        sip.send_to(&response(&text, 401, "Unauthorized", &extra, ""), from)
                            .unwrap();
                        continue;
                    }
                    if script.challenge.is_some() {
                        log.authorization = header(&text, "Authorization").map(str::to_owned);
                    }
                    if script.ring_forever {
                        sip.send_to(&response(&text, 180, "Ringing", "", ""), from)
                            .unwrap();
                        continue;
                    }
                    if let Some((code, retry)) = rejections.next() {
                        let extra = retry
                            .map(|r| format!("Retry-After: {r}\r\n"))
                            .unwrap_or_default();
                        sip.send_to(&response(&text, code, "Scripted", &extra, ""), from)
                            .unwrap();
                        continue;
                    }
                    caller_rtp = offered_rtp(&text);
                    invite_text = text.clone();
                    let mut extra =
                        format!("Contact: <sip:room@{}>\r\n", sip.local_addr().unwrap());
                    if let Some(se) = script.session_expires {
                        extra.push_str(&format!("Session-Expires: {se}\r\nRequire: timer\r\n"));
                    }
                    sip.send_to(&response(&text, 200, "OK", &extra, &answer), from)
                        .unwrap();
                    answered_at = Some(Instant::now());
                    next_rtp = Instant::now();
                }
                "CANCEL" => {
                    sip.send_to(&response(&text, 200, "OK", "", ""), from)
                        .unwrap();
                    // The INVITE it cancels ends with 487.
                    if let Some(invite) =
                        log.requests.iter().rev().find(|r| r.starts_with("INVITE "))
                    {
                        let invite = invite.clone();
                        sip.send_to(&response(&invite, 487, "Request Terminated", "", ""), from)
                            .unwrap();
                    }
                }
                "BYE" | "UPDATE" | "OPTIONS" => {
                    sip.send_to(&response(&text, 200, "OK", "", ""), from)
                        .unwrap();
                }
                _ => {}
            }
        }
        while let Ok((n, _)) = rtp.recv_from(&mut buf) {
            if n >= 12 {
                log.rtp_received += 1;
                log.rtp_arrivals.push(Instant::now());
            }
        }
        let Some(at) = answered_at else { continue };
        let (Some(sip_to), Some(rtp_to)) = (caller, caller_rtp) else {
            continue;
        };
        let since = at.elapsed();
        let paused = since >= script.rtp_first && since < script.rtp_first + script.rtp_pause;
        while next_rtp <= Instant::now() {
            if !paused && !bye_sent {
                let mut packet = vec![0x80, if script.opus { 111 } else { 0 }];
                packet.extend_from_slice(&seq.to_be_bytes());
                packet.extend_from_slice(&ts.to_be_bytes());
                packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                if script.opus {
                    // An Opus 20 ms silence frame.
                    packet.extend_from_slice(&[0xF8, 0xFF, 0xFE]);
                } else {
                    // 20 ms of a 400 Hz tone in PCMU.
                    for i in 0..160u32 {
                        let phase = f64::from(ts + i) * 400.0 / 8000.0 * std::f64::consts::TAU;
                        packet.push(mulaw((phase.sin() * 8000.0) as i16));
                    }
                }
                let _ = rtp.send_to(&packet, rtp_to);
                seq = seq.wrapping_add(1);
            }
            ts = ts.wrapping_add(160);
            next_rtp += Duration::from_millis(20);
        }
        if script.garbage && !garbage_done && since >= Duration::from_millis(500) {
            garbage_done = true;
            let junk: [&[u8]; 6] = [
                b"\x00\x01\x02",
                b"SIP/2.0 200 OK\r\n\r\n",
                b"INVITE sip:x SIP/2.0\r\nCSeq: banana\r\n\r\n",
                &[0xFF; 3000],
                b"\r\n\r\n",
                b"BYE sip:kiosk@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\nCall-ID: not-this-call\r\nCSeq: 9 BYE\r\nFrom: <sip:a@b>;tag=x\r\nTo: <sip:c@d>\r\n\r\n",
            ];
            for j in junk {
                sip.send_to(j, sip_to).unwrap();
                rtp.send_to(j, rtp_to).unwrap();
                log.garbage_sent += 2;
            }
            // An RTP header with a payload type nobody offered.
            let mut foreign = vec![0x80, 99, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
            foreign.extend_from_slice(&[0; 50]);
            rtp.send_to(&foreign, rtp_to).unwrap();
            log.garbage_sent += 1;
        }
        if let Some(after) = script.reinvite_after
            && since >= after
            && !reinvite_sent
        {
            reinvite_sent = true;
            let extra = "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n";
            let reinvite = in_dialog(
                &invite_text,
                "INVITE",
                2,
                "z9hG4bKpeerreinvite",
                &sip,
                extra,
                &answer,
            );
            sip.send_to(reinvite.as_bytes(), sip_to).unwrap();
        }
        if let Some(after) = script.bye_after
            && since >= after
            && !bye_sent
            && log.byes_sent == 0
        {
            bye_sent = true;
            log.byes_sent += 1;
            let bye = in_dialog(&invite_text, "BYE", 3, "z9hG4bKpeerbye", &sip, "", "");
            sip.send_to(bye.as_bytes(), sip_to).unwrap();
        }
    }
    log
}

/// A request from the peer inside the call `invite` set up.
fn in_dialog(
    invite: &str,
    method: &str,
    cseq: u32,
    branch: &str,
    sip: &UdpSocket,
    extra: &str,
    body: &str,
) -> String {
    let via = format!(
        "Via: SIP/2.0/UDP {};branch={branch}\r\n",
        sip.local_addr().unwrap()
    );
    let from_ours = header(invite, "To").unwrap_or("");
    let to_theirs = header(invite, "From").unwrap_or("");
    let contact = header(invite, "Contact")
        .unwrap_or("<sip:kiosk@127.0.0.1>")
        .trim_matches(|c| c == '<' || c == '>');
    let body_headers = if body.is_empty() {
        "Content-Length: 0\r\n".to_owned()
    } else {
        format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    format!(
        "{method} {contact} SIP/2.0\r\n{via}From: {from_ours};tag=peer1\r\nTo: {to_theirs}\r\n\
         Call-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}{body_headers}\r\n{body}",
        header(invite, "Call-ID").unwrap_or("")
    )
}

/// G.711 μ-law, written out independently of the product's encoder.
fn mulaw(sample: i16) -> u8 {
    let mut v = i32::from(sample);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = v.min(32_635) + 0x84;
    let mut exponent = 7;
    while exponent > 0 && v & (0x4000 >> (7 - exponent)) == 0 {
        exponent -= 1;
    }
    let mantissa = (v >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}
