//! The upload document (README "Upstream sync"): one JSON object per batch,
//! gzip-compressed.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::store::{Batch, BatchId, SessionRecord, TranscriptUpload};

#[derive(Serialize)]
pub struct Document<'a> {
    pub kiosk_id: &'a str,
    pub batch_id: BatchId,
    pub sessions: &'a [SessionRecord],
    pub transcripts: &'a [TranscriptUpload],
}

impl<'a> Document<'a> {
    pub fn new(kiosk_id: &'a str, batch: &'a Batch) -> Self {
        Self {
            kiosk_id,
            batch_id: batch.id,
            sessions: &batch.sessions,
            transcripts: &batch.transcripts,
        }
    }

    /// The gzip-compressed JSON body.
    pub fn to_gzip(&self) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        serde_json::to_writer(&mut gz, self).expect("serializing to memory cannot fail");
        gz.flush().expect("writing to memory cannot fail");
        gz.finish().expect("writing to memory cannot fail")
    }
}
