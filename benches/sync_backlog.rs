//! How long a kiosk that was offline for a long time takes to upload its
//! backlog: 100 000 transcript lines (10 000 ended sessions) to the fake
//! upstream on loopback, with the default batch size. One timed run (it is
//! a drain, not a loop): `cargo bench --bench sync_backlog`.

// The integration tests' fake upstream; the bench needs only its happy path.
#[allow(dead_code)]
#[path = "../tests/it/fake_upstream.rs"]
mod fake_upstream;

use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiosk_gateway::store::{
    NewSession, NewTranscript, Role, SessionEnd, SessionId, Store, StoreHandle,
};
use kiosk_gateway::sync::{SyncSettings, SyncWorker};
use tokio_util::sync::CancellationToken;

const SESSIONS: usize = 10_000;
const LINES_PER_SESSION: usize = 10;
const BATCH: u32 = 500;

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(&dir.path().join("backlog.db")).unwrap();
    let seeded = Instant::now();
    for n in 0..SESSIONS {
        let id = SessionId::new();
        let t = Timestamp::now();
        store
            .start_session(&NewSession {
                id,
                kiosk_id: "bench".into(),
                started_at: t,
                room_name: None,
                room_url: None,
                agent_session_id: None,
            })
            .unwrap();
        let lines: Vec<NewTranscript> = (0..LINES_PER_SESSION)
            .map(|i| NewTranscript {
                session_id: id,
                role: if i % 2 == 0 { Role::User } else { Role::Bot },
                text: format!("session {n} line {i}: is the museum open on Sundays?"),
                is_final: true,
                confidence: None,
                spoken_at: t,
                received_at: t,
            })
            .collect();
        store.add_transcripts(&lines).unwrap();
        store
            .end_session(
                id,
                &SessionEnd {
                    ended_at: t,
                    reason: "idle".into(),
                    user_speech_ms: 1000,
                    bot_speech_ms: 1000,
                },
            )
            .unwrap();
    }
    let seed_time = seeded.elapsed();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let upstream = fake_upstream::FakeUpstream::start().await;
        let (handle, _writer) = StoreHandle::spawn(store);
        let settings = SyncSettings {
            url: upstream.url.parse().unwrap(),
            token: fake_upstream::TOKEN.to_string().into(),
            kiosk_id: "bench".into(),
            batch_size: BATCH,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
            retention: Duration::from_secs(30 * 86_400),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            max_attempts: None,
        };
        let worker = SyncWorker::new(settings, handle.clone());
        let started = Instant::now();
        let report = worker.drain(&CancellationToken::new()).await.unwrap();
        let took = started.elapsed();
        let accepted = upstream.with(|r| r.transcripts.len());
        assert_eq!(accepted, SESSIONS * LINES_PER_SESSION);
        assert!(upstream.with(|r| r.transcripts.values().all(|n| *n == 1)));
        println!(
            "seeded {} lines in {:.2} s; synced {} lines + {} sessions in {} batches in {:.2} s ({:.0} lines/s)",
            SESSIONS * LINES_PER_SESSION,
            seed_time.as_secs_f64(),
            report.transcripts,
            report.sessions,
            report.batches,
            took.as_secs_f64(),
            report.transcripts as f64 / took.as_secs_f64()
        );
    });
}
