//! Store write throughput: transcript lines inserted in batches, as the
//! session layer and a backlog import write them (durable: WAL,
//! synchronous=FULL, on the real filesystem).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use kiosk_gateway::store::{NewSession, NewTranscript, Role, SessionId, Store};

fn lines(session_id: SessionId, n: usize) -> Vec<NewTranscript> {
    (0..n)
        .map(|i| NewTranscript {
            session_id,
            role: if i % 2 == 0 { Role::User } else { Role::Bot },
            text: format!("line {i}: where can I find the nearest pharmacy, please?"),
            is_final: true,
            confidence: Some(0.92),
            spoken_at: Timestamp::now(),
            received_at: Timestamp::now(),
        })
        .collect()
}

fn inserts(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(&dir.path().join("bench.db")).unwrap();
    let session = SessionId::new();
    store
        .start_session(&NewSession {
            id: session,
            kiosk_id: "bench".into(),
            started_at: Timestamp::now(),
            room_name: None,
            room_url: None,
            agent_session_id: None,
        })
        .unwrap();
    let mut group = c.benchmark_group("store_insert_transcripts");
    for batch in [1usize, 100, 1000] {
        let rows = lines(session, batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &rows, |b, rows| {
            b.iter(|| store.add_transcripts(rows).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = inserts
}
criterion_main!(benches);
