//! The upload document (README "Upstream sync"): one JSON object per batch,
//! gzip-compressed.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::store::{Batch, BatchId, SessionRecord, TranscriptUpload};

/// One upload's JSON body: the batch and who sends it.
#[derive(Serialize)]
pub struct Document<'a> {
    /// The sending kiosk.
    pub kiosk_id: &'a str,
    /// The batch's id, the same on every retry.
    pub batch_id: BatchId,
    /// Sessions in the batch.
    pub sessions: &'a [SessionRecord],
    /// Transcript lines in the batch.
    pub transcripts: &'a [TranscriptUpload],
}

impl<'a> Document<'a> {
    /// The body for `batch` from `kiosk_id`.
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
