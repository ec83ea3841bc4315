use super::*;
use jiff::Timestamp;

fn session(store: &Store) -> SessionId {
    let id = SessionId::new();
    store
        .start_session(&NewSession {
            id,
            kiosk_id: "lobby-1".into(),
            started_at: Timestamp::now(),
            room_name: None,
            room_url: None,
            agent_session_id: None,
        })
        .unwrap();
    id
}

fn line(session_id: SessionId, role: Role, text: &str) -> NewTranscript {
    NewTranscript {
        session_id,
        role,
        text: text.into(),
        is_final: true,
        confidence: None,
        spoken_at: Timestamp::now(),
        received_at: Timestamp::now(),
    }
}

#[test]
fn fresh_database_has_the_schema_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/kiosk.db");
    let (store, report) = Store::open(&path).unwrap();
    assert!(report.moved_aside.is_none());
    let tables = store.tables().unwrap();
    assert!(tables.contains(&"sessions".to_string()), "{tables:?}");
    assert!(tables.contains(&"transcripts".to_string()), "{tables:?}");
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn corrupt_database_is_kept_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiosk.db");
    let garbage = b"this was a database until the power went out".repeat(200);
    std::fs::write(&path, &garbage).unwrap();

    let (store, report) = Store::open(&path).unwrap();
    let aside = report.moved_aside.expect("damaged file moved aside");
    assert!(report.damage.is_some());
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        garbage,
        "kept byte for byte"
    );
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("kiosk.db.corrupt-")
    );
    assert_eq!(store.counts().unwrap().sessions, 0);
    session(&store);
    assert_eq!(store.counts().unwrap().sessions, 1);
}

#[test]
fn a_database_from_a_newer_version_is_refused_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiosk.db");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&path).err().expect("newer schema refused");
    assert!(matches!(err, StoreError::Migration { .. }), "{err}");
    assert!(path.exists());
}

#[test]
fn transcripts_keep_arrival_order_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
    let a = session(&store);
    let b = session(&store);
    store.add_transcript(&line(a, Role::User, "hello")).unwrap();
    store
        .add_transcript(&line(b, Role::User, "other kiosk visitor"))
        .unwrap();
    store
        .add_transcript(&line(a, Role::Bot, "hi, how can I help?"))
        .unwrap();

    let only_a = store.transcripts(Some(a)).unwrap();
    let texts: Vec<(u32, Role, &str)> = only_a
        .iter()
        .map(|t| (t.seq, t.role, t.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            (1, Role::User, "hello"),
            (2, Role::Bot, "hi, how can I help?")
        ]
    );
    assert_eq!(store.transcripts(None).unwrap().len(), 3);
    let counts = store.counts().unwrap();
    assert_eq!((counts.sessions, counts.open_sessions), (2, 2));
    assert_eq!(counts.unsynced_transcripts, 3);
}

#[test]
fn ending_a_session_records_reason_and_speech() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
    let id = session(&store);
    store
        .end_session(
            id,
            &SessionEnd {
                ended_at: Timestamp::now(),
                reason: "idle".into(),
                user_speech_ms: 4200,
                bot_speech_ms: 3100,
            },
        )
        .unwrap();
    let s = store.session(id).unwrap().unwrap();
    assert_eq!(s.end_reason.as_deref(), Some("idle"));
    assert_eq!((s.user_speech_ms, s.bot_speech_ms), (4200, 3100));
    assert!(s.ended_at.is_some());
    assert_eq!(store.counts().unwrap().open_sessions, 0);
}

#[test]
fn times_sort_as_text() {
    let a: Timestamp = "2026-11-22T01:02:03Z".parse().unwrap();
    let b: Timestamp = "2026-11-22T01:02:03.5Z".parse().unwrap();
    assert_eq!(format_time(a), "2026-11-22T01:02:03.000Z");
    assert!(format_time(a) < format_time(b));
}

#[test]
fn confidence_final_and_spoken_at_are_kept_for_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
    let id = session(&store);
    let received: Timestamp = "2026-03-02T10:00:03.456Z".parse().unwrap();
    let spoken: Timestamp = "2026-03-02T10:00:01.25Z".parse().unwrap();
    let lines = [
        NewTranscript {
            confidence: Some(0.875),
            spoken_at: spoken,
            received_at: received,
            ..line(id, Role::User, "Where is the lift?")
        },
        NewTranscript {
            is_final: false,
            spoken_at: spoken,
            received_at: received,
            ..line(id, Role::Bot, "It is behind")
        },
    ];
    let stored = store.add_transcripts(&lines).unwrap();
    assert_eq!(stored[0].spoken_at, spoken);
    let batch = store.next_batch(10).unwrap().expect("lines to upload");
    let rows: Vec<_> = batch
        .transcripts
        .iter()
        .map(|t| {
            (
                t.text.as_str(),
                t.is_final,
                t.confidence,
                t.spoken_at,
                t.received_at,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("Where is the lift?", true, Some(0.875), spoken, received),
            ("It is behind", false, None, spoken, received),
        ]
    );
}
