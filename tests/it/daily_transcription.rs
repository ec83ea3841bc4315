//! SIP mode's transcripts: Daily transcribes the room, and after the
//! session the fetch worker stores the WebVTT's cues as the session's
//! lines, against the fake Daily: roles and times, a transcript not ready
//! yet, Daily failing, garbage files, a worker killed mid-way, and the
//! lines reaching the sync upstream. The API key never leaves for the
//! file's host and never shows in an error.

use crate::daily_support;
use crate::fake_upstream;

use std::path::Path;
use std::time::Duration;

use daily_support::{API_KEY, FakeDaily, Fault};
use jiff::{SignedDuration, Timestamp};
use kiosk_gateway::daily::{DailyClient, DailySettings, Room, RoomName, unix_now};
use kiosk_gateway::store::{
    FetchState, NewSession, Role, SessionEnd, SessionId, Store, StoreHandle, WriterThread,
};
use kiosk_gateway::sync::{SyncSettings, SyncWorker};
use kiosk_gateway::transcript_fetch::{self, FetchJob, FetchSettings, TranscriptFetcher};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const KIOSK: &str = "lobby-kiosk";

fn client(fake: &FakeDaily) -> DailyClient {
    DailyClient::new(&DailySettings {
        base_url: fake.base_url(),
        api_key: SecretString::from(API_KEY),
        request_timeout: Duration::from_secs(2),
        // The worker retries on its own schedule; one try per attempt keeps
        // the counts in these tests exact.
        max_retries: 0,
        retry_min_delay: Duration::from_millis(5),
        retry_max_delay: Duration::from_millis(20),
        ..DailySettings::default()
    })
    .unwrap()
}

fn fast() -> FetchSettings {
    FetchSettings {
        poll_interval: Duration::from_millis(20),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        max_age: Duration::from_secs(60),
        ..FetchSettings::default()
    }
}

fn open(dir: &Path) -> (StoreHandle, WriterThread) {
    let (store, _) = Store::open(&dir.join("kiosk.db")).unwrap();
    StoreHandle::spawn(store)
}

/// A SIP session as the session code runs it: a room, transcription
/// started when the call is answered and stopped before the room is
/// deleted, the session ended, and its fetch queued.
async fn sip_session(fake: &FakeDaily, daily: &DailyClient, store: &StoreHandle) -> FetchJob {
    let name = RoomName::for_kiosk(KIOSK);
    let room: Room = daily
        .create_room(
            &daily
                .room_settings()
                .create_request(name.clone(), unix_now()),
        )
        .await
        .unwrap();
    let id = SessionId::new();
    // Times are stored to the millisecond.
    let started_at =
        Timestamp::from_millisecond(Timestamp::now().as_millisecond() - 30_000).unwrap();
    let room_name = name.to_string();
    store
        .call(move |s| {
            s.start_session(&NewSession {
                id,
                kiosk_id: KIOSK.into(),
                started_at,
                room_name: Some(room_name),
                room_url: None,
                agent_session_id: None,
            })
        })
        .await
        .unwrap();
    daily.start_transcription(&name).await.unwrap();
    daily.stop_transcription(&name).await.unwrap();
    daily.delete_room(&name).await.unwrap();
    store
        .call(move |s| {
            s.end_session(
                id,
                &SessionEnd {
                    ended_at: Timestamp::now(),
                    reason: "idle".into(),
                    user_speech_ms: 0,
                    bot_speech_ms: 0,
                },
            )
        })
        .await
        .unwrap();
    assert_eq!(fake.transcripts().len(), 1);
    let job = FetchJob {
        session_id: id,
        room_name: name.to_string(),
        room_id: room.id,
        display_name: KIOSK.into(),
        started_at,
    };
    transcript_fetch::enqueue(store, job.clone()).await.unwrap();
    job
}

async fn lines(store: &StoreHandle, id: SessionId) -> Vec<(Role, String, Timestamp)> {
    store
        .call(move |s| s.transcripts(Some(id)))
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.role, t.text, t.spoken_at))
        .collect()
}

async fn fetch_state(store: &StoreHandle, id: SessionId) -> Option<(FetchState, Option<String>)> {
    store
        .call(move |s| s.transcript_fetch(id))
        .await
        .unwrap()
        .map(|r| (r.state, r.last_error))
}

/// Runs passes until the job is settled (stored or parked); returns the
/// number of passes.
async fn settle(fetcher: &TranscriptFetcher, store: &StoreHandle, id: SessionId) -> u32 {
    for pass in 1..=200 {
        fetcher.run_due().await.unwrap();
        match fetch_state(store, id).await {
            None | Some((FetchState::Parked, _)) => return pass,
            Some(_) => tokio::time::sleep(Duration::from_millis(15)).await,
        }
    }
    panic!("the fetch job never settled");
}

#[tokio::test]
async fn cues_become_the_sessions_lines_with_roles_and_times() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;

    let fetcher = TranscriptFetcher::new(daily, store.clone(), fast());
    let report = fetcher.run_due().await.unwrap();
    assert_eq!((report.stored, report.lines), (1, 3));

    let got = lines(&store, job.session_id).await;
    let at = |ms: i64| job.started_at + SignedDuration::from_millis(ms);
    assert_eq!(
        got,
        [
            (Role::User, "Hello, where is the pharmacy?".into(), at(1200)),
            (
                Role::Bot,
                "It is on the second floor, next to the lifts.".into(),
                at(3500)
            ),
            (Role::User, "Thank you!".into(), at(7000)),
        ]
    );
    assert_eq!(fetch_state(&store, job.session_id).await, None);
    // The pre-signed link is on another host: the key never goes there.
    assert_eq!(fake.download_auth(), [None]);
    // Nothing is fetched twice.
    assert_eq!(fetcher.run_due().await.unwrap().stored, 0);
    assert_eq!(lines(&store, job.session_id).await.len(), 3);
}

#[tokio::test]
async fn a_transcript_not_ready_twice_is_stored_on_the_third_look() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;
    fake.transcript_not_ready_for(2);

    let fetcher = TranscriptFetcher::new(daily, store.clone(), fast());
    settle(&fetcher, &store, job.session_id).await;
    assert_eq!(
        fake.count(reqwest::Method::GET, "/v1/transcript"),
        3,
        "two in-progress answers, then the finished transcript"
    );
    assert_eq!(lines(&store, job.session_id).await.len(), 3);
}

#[tokio::test]
async fn daily_failing_or_slow_is_retried_until_stored() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;
    fake.inject(
        "GET /v1/transcript",
        [Fault::ServerError, Fault::ServerError],
    );
    fake.inject_file([Fault::ServerError, Fault::Slow(Duration::from_millis(300))]);

    let fetcher = TranscriptFetcher::new(daily, store.clone(), fast());
    let passes = settle(&fetcher, &store, job.session_id).await;
    assert!(passes >= 4, "{passes}");
    assert_eq!(lines(&store, job.session_id).await.len(), 3);
}

#[tokio::test]
async fn a_garbage_file_parks_the_job_with_a_reason_and_stores_nothing() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;
    fake.serve_vtt(b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>");

    let fetcher = TranscriptFetcher::new(daily, store.clone(), fast());
    let report = fetcher.run_due().await.unwrap();
    assert_eq!(report.parked, 1);
    let (state, reason) = fetch_state(&store, job.session_id).await.unwrap();
    assert_eq!(state, FetchState::Parked);
    let reason = reason.unwrap();
    assert!(reason.contains("not a WebVTT file"), "{reason}");
    assert!(lines(&store, job.session_id).await.is_empty());
    // Parked jobs are not tried again.
    assert_eq!(fetcher.run_due().await.unwrap(), Default::default());
}

#[tokio::test]
async fn a_transcript_never_ready_is_parked_after_the_maximum_age() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;
    fake.transcript_not_ready_for(u32::MAX);

    let settings = FetchSettings {
        max_age: Duration::from_millis(150),
        ..fast()
    };
    let fetcher = TranscriptFetcher::new(daily, store.clone(), settings);
    settle(&fetcher, &store, job.session_id).await;
    let (state, reason) = fetch_state(&store, job.session_id).await.unwrap();
    assert_eq!(state, FetchState::Parked);
    let reason = reason.unwrap();
    assert!(
        reason.contains("gave up") && reason.contains("still in progress"),
        "{reason}"
    );
    assert!(lines(&store, job.session_id).await.is_empty());
}

#[tokio::test]
async fn a_worker_killed_mid_way_or_racing_another_stores_each_line_once() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;

    // Killed during the download: the task is aborted, the job stays.
    fake.inject_file([Fault::Slow(Duration::from_millis(500))]);
    let task = tokio::spawn(
        TranscriptFetcher::new(daily.clone(), store.clone(), fast()).run(CancellationToken::new()),
    );
    for _ in 0..100 {
        if !fake.download_auth().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    assert!(lines(&store, job.session_id).await.is_empty());

    // The process restarts: the job is still queued in the database.
    drop(store);
    writer.join();
    let (store, _writer) = open(dir.path());
    assert_eq!(
        fetch_state(&store, job.session_id).await.map(|s| s.0),
        Some(FetchState::Pending)
    );

    // Two workers take the same job at once (an old one not quite dead):
    // both download, only one stores.
    let a = TranscriptFetcher::new(daily.clone(), store.clone(), fast());
    let b = TranscriptFetcher::new(daily, store.clone(), fast());
    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(ra.unwrap().stored + rb.unwrap().stored, 1);
    assert!(fake.download_auth().len() >= 2);
    assert_eq!(lines(&store, job.session_id).await.len(), 3);
    assert_eq!(fetch_state(&store, job.session_id).await, None);
}

#[tokio::test]
async fn lines_fetched_after_the_session_was_synced_still_reach_the_upstream() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let upstream = fake_upstream::FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());
    let sync = SyncWorker::new(
        SyncSettings {
            url: upstream.url.parse().unwrap(),
            token: fake_upstream::TOKEN.to_string().into(),
            kiosk_id: KIOSK.into(),
            batch_size: 100,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            retention: Duration::from_secs(30 * 86_400),
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
            max_attempts: None,
        },
        store.clone(),
    );
    let job = sip_session(&fake, &daily, &store).await;

    // The ended session goes up first, with no lines.
    let report = sync.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.sessions, report.transcripts), (1, 0));

    let fetcher = TranscriptFetcher::new(daily, store.clone(), fast());
    assert_eq!(fetcher.run_due().await.unwrap().lines, 3);

    let report = sync.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.sessions, report.transcripts), (0, 3));
    let ids: Vec<String> = store
        .call(move |s| s.transcripts(Some(job.session_id)))
        .await
        .unwrap()
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    upstream.with(|r| {
        for id in &ids {
            assert_eq!(r.transcripts.get(id), Some(&1), "{id}");
        }
    });
}

#[tokio::test]
async fn the_api_key_and_the_signed_link_stay_out_of_errors() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = open(dir.path());

    // A refused start: Daily's answer, nothing of the key.
    let name = RoomName::parse("no-such-room").unwrap();
    let err = daily.start_transcription(&name).await.unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(API_KEY), "{text}");
    }

    // A failing download: the parked reason names neither the key nor the
    // link's signature.
    let job = sip_session(&fake, &daily, &store).await;
    fake.inject_file(std::iter::repeat_n(Fault::ServerError, 1000));
    let settings = FetchSettings {
        max_age: Duration::from_millis(100),
        ..fast()
    };
    let fetcher = TranscriptFetcher::new(daily, store.clone(), settings);
    settle(&fetcher, &store, job.session_id).await;
    let (state, reason) = fetch_state(&store, job.session_id).await.unwrap();
    assert_eq!(state, FetchState::Parked);
    let reason = reason.unwrap();
    assert!(reason.contains("download transcript"), "{reason}");
    assert!(!reason.contains(API_KEY), "{reason}");
    assert!(!reason.contains("presigned-secret"), "{reason}");
    assert!(fake.download_auth().iter().all(Option::is_none));
}

/// `run` with `daily.transcription = true`, on a database holding a queued job.
fn daemon(dir: &Path, fake: &FakeDaily) -> crate::common::Daemon {
    let config = crate::common::write_config(
        dir,
        &format!(
            "[daily]\nbase_url = \"{}\"\ntranscription = true\nsip_display_name = \"{KIOSK}\"\n",
            fake.base_url()
        ),
    );
    crate::common::Daemon::start(dir, &config, &[("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY)])
}

fn stored_lines(dir: &Path, id: SessionId) -> usize {
    Store::open_read_only(&dir.join("kiosk.db"))
        .unwrap()
        .transcripts(Some(id))
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_daemon_fetches_queued_transcripts_and_survives_kill_9_mid_way() {
    let fake = FakeDaily::start().await;
    let daily = client(&fake);
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path());
    let job = sip_session(&fake, &daily, &store).await;
    drop(store);
    writer.join();

    // Killed hard while the file downloads.
    fake.inject_file([Fault::Slow(Duration::from_secs(30))]);
    let first = daemon(dir.path(), &fake);
    crate::common::wait_until("the download", Duration::from_secs(20), &first, || {
        !fake.download_auth().is_empty()
    })
    .await;
    first.signal("KILL");
    let first_log = first.stderr();
    drop(first);
    assert_eq!(stored_lines(dir.path(), job.session_id), 0);

    // The restarted daemon finds the job and stores its lines once.
    let mut second = daemon(dir.path(), &fake);
    crate::common::wait_until("the lines", Duration::from_secs(20), &second, || {
        stored_lines(dir.path(), job.session_id) == 3
    })
    .await;
    second.signal("TERM");
    assert!(second.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(stored_lines(dir.path(), job.session_id), 3);
    let log = format!("{first_log}{}", second.stderr());
    assert!(
        log.contains("transcript fetched from Daily and stored"),
        "{log}"
    );
    assert!(!log.contains(API_KEY), "{log}");
    assert!(!log.contains("presigned-secret"), "{log}");
    assert!(fake.download_auth().iter().all(Option::is_none));
}
