//! Upstream sync against a fake upstream that injects faults: every row is
//! accepted exactly once, nothing is lost, refused batches are parked and
//! can always be sent again (under a new key), waits are never busy, and
//! only the upstream's own answer counts as accepted.

use crate::common;
use crate::fake_upstream;

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

    // A technician fixes the upstream and asks for a retry. The upstream
    // answers the parked batch's key with its first answer forever (as the
    // README asks of it), so the rows must go under a new key.
    let parked_key = parked.id.to_string();
    let sent_with = |key: &str| {
        upstream.with(|r| {
            r.log
                .iter()
                .filter(|(_, k)| k.as_deref() == Some(key))
                .count()
        })
    };
    let sent_before = sent_with(&parked_key);
    upstream.refuse_transcript(None);
    worker.trigger().retry_parked();
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.parked, 0);
    assert_eq!(
        sent_with(&parked_key),
        sent_before,
        "the refused key is never sent again"
    );
    upstream.with(|r| {
        assert!(r.refused.contains_key(&parked_key));
        assert!(
            !r.batches.contains_key(&parked_key),
            "a new key, not the refused one"
        );
    });
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

    let parked_key = handle.call(|s| s.backlog()).await.unwrap().parked[0]
        .id
        .to_string();

    // Restarted with the fixed token: the parked rows go again, under a new key.
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
    upstream.with(|r| {
        assert_eq!(r.transcripts.len(), 4);
        assert_eq!(r.sessions.len(), 2);
        assert_eq!(r.batches.len(), 1);
        assert!(!r.batches.contains_key(&parked_key), "{parked_key} reused");
    });
    let backlog = handle.call(|s| s.backlog()).await.unwrap();
    assert!(backlog.parked.is_empty());
    assert_eq!((backlog.transcripts, backlog.sessions), (0, 0));
    cancel.cancel();
    task.await.unwrap();
}

/// Rows that may not be resent under their old key, however often.
async fn parked_rows(handle: &StoreHandle) -> (u64, u64) {
    let b = handle.call(|s| s.backlog()).await.unwrap();
    (
        b.parked.iter().map(|p| p.transcripts).sum(),
        b.parked.iter().map(|p| p.sessions).sum(),
    )
}

#[tokio::test]
async fn a_refused_batch_converges_after_a_fix_and_a_retry_and_never_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        seed(&mut store, 3, 4, true)
    };
    let upstream = FakeUpstream::start().await;
    upstream.refuse_transcript(Some(ids[5].clone()));
    let (handle, _writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 5), handle.clone());
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(report.parked, 1);
    assert_eq!(parked_rows(&handle).await, (5, 0));

    // Retried while the upstream still refuses: parked again, under a new
    // key each time, and nothing else moves.
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(handle.call(|s| s.backlog()).await.unwrap().parked[0].id);
        worker.trigger().retry_parked();
        let report = worker.drain(&CancellationToken::new()).await.unwrap();
        assert_eq!(report.parked, 1);
        assert_eq!(parked_rows(&handle).await.0, 5);
    }
    let last = handle.call(|s| s.backlog()).await.unwrap().parked[0].id;
    keys.push(last);
    keys.dedup();
    assert_eq!(keys.len(), 3, "each retry is a new batch: {keys:?}");

    // Fixed upstream, one more retry: everything is there, each row once.
    upstream.refuse_transcript(None);
    worker.trigger().retry_parked();
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.parked, report.batches), (0, 1));
    let backlog = handle.call(|s| s.backlog()).await.unwrap();
    assert!(backlog.parked.is_empty());
    assert_eq!((backlog.transcripts, backlog.sessions), (0, 0));
    upstream.with(|r| {
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.transcripts.len(), 12);
        assert!(
            r.transcripts.values().all(|n| *n == 1),
            "{:?}",
            r.transcripts
        );
        assert_eq!(r.sessions.len(), 3);
        for k in &keys {
            assert!(r.refused.contains_key(&k.to_string()));
        }
    });
}

#[tokio::test]
async fn retry_after_zero_or_in_the_past_waits_a_second() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        seed(&mut store, 1, 2, true);
    }
    let upstream = FakeUpstream::start().await;
    upstream.plan([
        Fault::RetryAfter("0"),
        Fault::RetryAfter("Thu, 01 Jan 1970 00:00:00 GMT"),
        Fault::RetryAfter("-5"),
        Fault::Accept,
    ]);
    let (handle, _writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 50), handle.clone());
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.batches, report.retries), (1, 3));
    upstream.with(|r| {
        let times: Vec<_> = r.log.iter().map(|(t, _)| *t).collect();
        assert_eq!(times.len(), 4);
        // "0" and a past date are floored at 1 s; "-5" is no valid value,
        // so the worker's own backoff (5-50 ms here) applies.
        for (n, pair) in times.windows(2).take(2).enumerate() {
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_millis(1000), "attempt {n}: {gap:?}");
            assert!(gap < Duration::from_secs(3), "attempt {n}: {gap:?}");
        }
        assert!(times[3] - times[2] < Duration::from_millis(500));
    });
}

#[tokio::test]
async fn an_upstream_saying_retry_after_zero_forever_gets_one_attempt_a_second() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        seed(&mut store, 1, 2, true);
    }
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Fault::RetryAfter("0"));
    let (handle, _writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 50), handle.clone());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop.cancel();
    });
    let report = worker.drain(&cancel).await.unwrap();
    assert!(!report.complete);
    let requests = upstream.with(|r| r.requests);
    assert!((2..=3).contains(&requests), "{requests} attempts in 2.5 s");
}

#[tokio::test]
async fn a_captive_portal_page_is_not_an_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        seed(&mut store, 1, 3, true);
    }
    let upstream = FakeUpstream::start().await;
    upstream.plan([
        Fault::PortalPage,
        Fault::Redirect("http://portal.lobby-wifi.example/login?continue=1"),
        Fault::PortalPage,
        Fault::AcceptEmpty,
    ]);
    let (handle, _writer) = open(dir.path());
    let worker = SyncWorker::new(settings(&upstream.url, 50), handle.clone());
    let mut status = worker.status();
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    // Three answers that are not the upstream's are retried, under the same
    // key; a 204 with no body is an acceptance.
    assert_eq!((report.batches, report.retries, report.parked), (1, 3, 0));
    upstream.with(|r| {
        assert_eq!(r.requests, 4);
        let keys: Vec<_> = r.log.iter().map(|(_, k)| k.clone().unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(r.transcripts.len(), 3);
        assert_eq!(r.sessions.len(), 1);
    });
    let backlog = handle.call(|s| s.backlog()).await.unwrap();
    assert_eq!((backlog.transcripts, backlog.sessions), (0, 0));
    let status = status.borrow_and_update().clone();
    assert_eq!(status.batches_accepted, 1);
    let error = status.last_error.unwrap().message;
    assert!(error.contains("captive portal"), "{error}");
}

#[tokio::test]
async fn only_a_portal_answering_forever_keeps_rows_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        seed(&mut store, 1, 2, true);
    }
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Fault::PortalPage);
    let (handle, _writer) = open(dir.path());
    let mut s = settings(&upstream.url, 50);
    s.max_attempts = Some(4);
    let worker = SyncWorker::new(s, handle.clone());
    let report = worker.drain(&CancellationToken::new()).await.unwrap();
    assert!(!report.complete);
    assert_eq!((report.batches, report.parked, report.retries), (0, 0, 4));
    let backlog = handle.call(|s| s.backlog()).await.unwrap();
    assert_eq!(
        (backlog.transcripts, backlog.sessions),
        (2, 1),
        "nothing marked synced"
    );
    assert!(
        backlog.parked.is_empty(),
        "and nothing parked: it goes when the portal does"
    );
}

/// A kiosk whose upstream refuses one of its lines: the config, and the
/// refused line's id.
fn refusing_kiosk(dir: &Path, upstream: &FakeUpstream) -> (std::path::PathBuf, Vec<String>) {
    let ids = {
        let (mut store, _) = Store::open(&dir.join("kiosk.db")).unwrap();
        seed(&mut store, 1, 3, true)
    };
    upstream.refuse_transcript(Some(ids[1].clone()));
    let config = common::write_config(
        dir,
        &format!(
            "[sync]\nurl = \"{}\"\ninterval = \"1h\"\nbatch_size = 10\n",
            upstream.url
        ),
    );
    (config, ids)
}

#[tokio::test]
async fn sync_retry_parked_on_the_command_line_sends_the_rows_under_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = FakeUpstream::start().await;
    let (config, ids) = refusing_kiosk(dir.path(), &upstream);
    let sync = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                common::command(&config)
                    .arg("sync")
                    .args(args)
                    .env("KIOSK_GATEWAY_SYNC_TOKEN", TOKEN)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = sync(&["--once"]).await;
    assert_eq!(out.status.code(), Some(1), "a batch is parked");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("parked batches: 1"), "{stdout}");
    let refused_key = upstream.with(|r| r.refused.keys().next().unwrap().clone());

    // Fixed upstream; without --retry-parked (same settings) it stays parked.
    upstream.refuse_transcript(None);
    let out = sync(&["--once"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(upstream.with(|r| r.requests), 1);

    let out = sync(&["--once", "--retry-parked"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("parked batches: 0"), "{stdout}");
    upstream.with(|r| {
        assert_eq!(r.requests, 2);
        assert!(!r.batches.contains_key(&refused_key));
        assert_eq!(r.transcripts.len(), 3);
        assert!(r.transcripts.contains_key(&ids[1]));
        assert_eq!(r.sessions.len(), 1);
    });
}

#[tokio::test]
async fn post_api_sync_retry_parked_sends_the_rows_under_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = FakeUpstream::start().await;
    let (config, ids) = refusing_kiosk(dir.path(), &upstream);
    let d = common::Daemon::start(
        dir.path(),
        &config,
        &[
            ("KIOSK_GATEWAY_STATUS_TOKEN", "status-token-1"),
            ("KIOSK_GATEWAY_SYNC_TOKEN", TOKEN),
        ],
    );
    let c = reqwest::Client::new();
    let status = || async {
        c.get(format!("{}/api/status", d.url))
            .bearer_auth("status-token-1")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let parked = loop {
        let s = status().await;
        if let Some(p) = s["sync"]["backlog"]["parked"]
            .as_array()
            .filter(|p| !p.is_empty())
        {
            break p[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "never parked: {s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        parked["error"].as_str().unwrap().contains("HTTP 400"),
        "{parked}"
    );
    let refused_key = parked["id"].as_str().unwrap().to_string();

    upstream.refuse_transcript(None);
    let r = c
        .post(format!("{}/api/sync?retry_parked=true", d.url))
        .bearer_auth("status-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    while upstream.with(|r| r.transcripts.len()) < 3 {
        assert!(std::time::Instant::now() < deadline, "retry never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upstream.with(|r| {
        assert!(!r.batches.contains_key(&refused_key));
        assert!(r.transcripts.contains_key(&ids[1]));
        assert!(r.transcripts.values().all(|n| *n == 1));
    });
    let s = loop {
        let s = status().await;
        if s["sync"]["backlog"]["parked"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still parked: {s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["sync"]["backlog"]["transcripts"], 0);
}

#[test]
fn the_sync_command_gives_parked_rows_another_chance_after_a_settings_change() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(FakeUpstream::start());
    let (config, _) = refusing_kiosk(dir.path(), &upstream);
    upstream.refuse_transcript(None);
    let sync = |token: &str| {
        common::command(&config)
            .args(["sync", "--once"])
            .env("KIOSK_GATEWAY_SYNC_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = sync("expired-token");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("HTTP 401"), "{stdout}");
    let out = sync(TOKEN);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    upstream.with(|r| {
        assert_eq!(r.transcripts.len(), 3);
        assert_eq!(r.batches.len(), 1);
    });
}
