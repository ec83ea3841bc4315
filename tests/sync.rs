//! Upstream sync against a fake upstream that injects faults: every row is
//! accepted exactly once, nothing is lost, refused batches are parked.

mod fake_upstream;

use std::path::Path;
use std::time::Duration;

use fake_upstream::{FakeUpstream, Fault, TOKEN};
use jiff::Timestamp;
use kiosk_gateway::store::{
    NewSession, NewTranscript, Role, SessionEnd, SessionId, Store, StoreHandle, WriterThread,
};
use kiosk_gateway::sync::{SyncSettings, SyncWorker};
use tokio_util::sync::CancellationToken;

fn settings(url: &str, batch_size: u32) -> SyncSettings {
    SyncSettings {
        url: url.parse().unwrap(),
        token: TOKEN.to_string().into(),
        kiosk_id: "test-kiosk".into(),
        batch_size,
        interval: Duration::from_secs(3600),
        timeout: Duration::from_millis(500),
        retention: Duration::from_secs(30 * 86_400),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        max_attempts: None,
    }
}

/// `sessions` ended sessions with `lines` transcript lines each; returns
/// every transcript id.
fn seed(store: &mut Store, sessions: usize, lines: usize, end: bool) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..sessions {
        let id = SessionId::new();
        store
            .start_session(&NewSession {
                id,
                kiosk_id: "test-kiosk".into(),
                started_at: Timestamp::now(),
                room_name: Some(format!("kiosk-test-{n}")),
                room_url: None,
                agent_session_id: None,
            })
            .unwrap();
        for i in 0..lines {
            let t = store
                .add_transcript(&NewTranscript {
                    session_id: id,
                    role: if i % 2 == 0 { Role::User } else { Role::Bot },
                    text: format!("session {n} line {i}"),
                    is_final: true,
                    confidence: None,
                    spoken_at: Timestamp::now(),
                    received_at: Timestamp::now(),
                })
                .unwrap();
            ids.push(t.id.to_string());
        }
        if end {
            store
                .end_session(
                    id,
                    &SessionEnd {
                        ended_at: Timestamp::now(),
                        reason: "idle".into(),
                        user_speech_ms: 1000,
                        bot_speech_ms: 1000,
                    },
                )
                .unwrap();
        }
    }
    ids
}

fn open(dir: &Path) -> (StoreHandle, WriterThread) {
    let (store, _) = Store::open(&dir.join("kiosk.db")).unwrap();
    StoreHandle::spawn(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_sessions_through_a_fault_storm_arrive_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiosk.db");
    let ids = {
        let (mut store, _) = Store::open(&db).unwrap();
        seed(&mut store, 300, 4, true)
    };
    let upstream = FakeUpstream::start().await;
    // Every fault the README promises to survive, several times over.
    let mut plan = Vec::new();
    for i in 0..60 {
        plan.push(match i % 8 {
            0 => Fault::Status(503),
            1 => Fault::Reset,
            2 => Fault::AcceptThenDrop,
            3 => Fault::Status(500),
            4 => Fault::AcceptSlowly(Duration::from_millis(800)),
            5 => Fault::Status(408),
            6 => Fault::Accept,
            _ => Fault::Status(502),
        });
    }
    plan.insert(10, Fault::TooMany(1));
    upstream.plan(plan);
    // One batch is refused for its content and must be parked, not lost.
    let refused = ids[333].clone();
    upstream.refuse_transcript(Some(refused.clone()));

    let (handle, writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 50), handle.clone());
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert!(report.complete);
    assert_eq!(report.parked, 1);
    assert!(report.retries >= 40, "faults were retried: {report:?}");

    let backlog = handle.call(|s| s.backlog()).await.unwrap();
    assert_eq!(backlog.parked.len(), 1);
    let parked = &backlog.parked[0];
    assert!(
        parked.error.as_deref().unwrap().contains("HTTP 400"),
        "{parked:?}"
    );
    assert_eq!(
        backlog.transcripts, parked.transcripts,
        "only the parked rows wait"
    );

    upstream.with(|r| {
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(!r.transcripts.contains_key(&refused));
        for (id, n) in &r.transcripts {
            assert_eq!(*n, 1, "transcript {id} accepted {n} times");
        }
        assert_eq!(r.transcripts.len() as u64, 1200 - parked.transcripts);
    });

    // A technician fixes the upstream and asks for a retry.
    upstream.refuse_transcript(None);
    worker.trigger().retry_parked();
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.parked, 0);
    let backlog = handle.call(|s| s.backlog()).await.unwrap();
    assert_eq!((backlog.transcripts, backlog.sessions), (0, 0));
    assert!(backlog.parked.is_empty());
    upstream.with(|r| {
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.transcripts.len(), 1200);
        assert!(r.transcripts.values().all(|n| *n == 1));
        assert_eq!(r.sessions.len(), 300);
        assert!(r.sessions.values().all(|n| *n == 1));
        for id in &ids {
            assert!(r.transcripts.contains_key(id), "{id} lost");
        }
    });
    // Synced rows stay until retention says otherwise.
    assert_eq!(handle.call(|s| s.counts()).await.unwrap().transcripts, 1200);
    drop((worker, handle));
    writer.join();
}

#[tokio::test]
async fn open_sessions_are_sent_when_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiosk.db");
    {
        let (mut store, _) = Store::open(&db).unwrap();
        seed(&mut store, 1, 3, false);
    }
    let upstream = FakeUpstream::start().await;
    let (handle, _writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 50), handle.clone());
    worker.drain(&CancellationToken::new()).await.unwrap();
    upstream.with(|r| {
        assert_eq!(r.transcripts.len(), 3, "lines go up as they come");
        assert!(r.sessions.is_empty(), "the open session waits for its end");
    });
    let open: Vec<String> = handle
        .call(|s| {
            Ok(s.transcripts(None)?
                .iter()
                .map(|t| t.session_id.to_string())
                .collect())
        })
        .await
        .unwrap();
    let id: SessionId = open[0].parse().unwrap();
    handle
        .call(move |s| {
            s.end_session(
                id,
                &SessionEnd {
                    ended_at: Timestamp::now(),
                    reason: "idle".into(),
                    user_speech_ms: 1,
                    bot_speech_ms: 1,
                },
            )
        })
        .await
        .unwrap();
    worker.drain(&CancellationToken::new()).await.unwrap();
    upstream.with(|r| {
        let session = r
            .batches
            .values()
            .find_map(|b| b["sessions"].as_array().filter(|a| !a.is_empty()).cloned());
        let session = &session.expect("session sent")[0];
        assert_eq!(session["end_reason"], "idle");
        assert_eq!(session["kiosk_id"], "test-kiosk");
    });
}

#[tokio::test]
async fn the_worker_retries_through_an_outage_and_wakes_on_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiosk.db");
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Fault::Status(503));
    let (handle, _writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 10), handle.clone());
    let trigger = worker.trigger();
    let mut status = worker.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(worker.run(cancel.clone()));
    {
        let (mut store, _) = Store::open(&db).unwrap();
        seed(&mut store, 5, 2, true);
    }
    trigger.sync_now();
    // Wait until the outage has been seen and reported.
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.retrying))
        .await
        .unwrap()
        .unwrap();
    let error = status.borrow().last_error.clone().unwrap();
    assert!(error.message.contains("503"), "{error:?}");
    assert!(!error.message.contains(TOKEN));
    upstream.set_default(Fault::Accept);
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.batches_accepted >= 1 && !s.retrying),
    )
    .await
    .unwrap()
    .unwrap();
    upstream.with(|r| assert_eq!(r.transcripts.len(), 10));
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_wrong_token_parks_and_new_settings_requeue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        seed(&mut store, 2, 2, true);
    }
    let upstream = FakeUpstream::start().await;
    let (handle, _writer) = open(dir.path());
    let mut wrong = settings(&upstream.url, 50);
    wrong.token = "expired-token".to_string().into();
    let worker = SyncWorker::new(wrong, handle.clone());
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.parked, 1);
    let status = worker.status().borrow().clone();
    let message = status.last_error.unwrap().message;
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains("expired-token"));
    drop(worker);

    // Restarted with the fixed token: the parked batch goes again, same key.
    let worker = SyncWorker::new(settings(&upstream.url, 50), handle.clone());
    let mut status = worker.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(worker.run(cancel.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.batches_accepted == 1),
    )
    .await
    .unwrap()
    .unwrap();
    upstream.with(|r| assert_eq!(r.transcripts.len(), 4));
    cancel.cancel();
    task.await.unwrap();
}
