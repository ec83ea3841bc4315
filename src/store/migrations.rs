//! Forward-only schema migrations. A migration, once released, never
//! changes: add a new one instead.

use rusqlite_migration::{M, Migrations};

pub fn all() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("migrations/0001_sessions_transcripts.sql")),
        M::up(include_str!("migrations/0002_sync_batches.sql")),
        M::up(include_str!("migrations/0003_transcript_fetches.sql")),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::all().validate().is_ok());
    }
}
