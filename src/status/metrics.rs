//! Prometheus metrics: one process-wide recorder, rendered on `/metrics`.

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::audio::AudioMetrics;
use crate::control::LinkView;
use crate::store::{Backlog, Counts};

struct Recorder {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

/// The recorder, installed on first use. Installing is once per process;
/// everything that records a metric shares it.
fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("the metrics recorder is installed only here, once");
        let process = metrics_process::Collector::default();
        process.describe();
        describe();
        Recorder { handle, process }
    })
}

fn describe() {
    describe_gauge!("kiosk_store_sessions", "Sessions stored.");
    describe_gauge!(
        "kiosk_store_open_sessions",
        "Sessions stored without an end."
    );
    describe_gauge!("kiosk_store_transcripts", "Transcript lines stored.");
    describe_gauge!(
        "kiosk_store_unsynced_transcripts",
        "Transcript lines not yet accepted upstream."
    );
    describe_gauge!(
        "kiosk_store_size_bytes",
        "Database file size, with its WAL."
    );
    describe_gauge!("kiosk_uptime_seconds", "Seconds since the gateway started.");
    describe_counter!(
        "kiosk_store_recoveries_total",
        "Damaged databases moved aside at start-up."
    );
    describe_gauge!(
        "kiosk_sync_backlog_transcripts",
        "Transcript lines waiting for upload."
    );
    describe_gauge!(
        "kiosk_sync_backlog_sessions",
        "Ended sessions waiting for upload."
    );
    describe_gauge!(
        "kiosk_sync_parked_batches",
        "Batches the upstream refused, kept aside."
    );
    describe_counter!(
        "kiosk_sync_attempts_total",
        "Upload attempts by result: accepted, retry, parked."
    );
    describe_counter!(
        "kiosk_audio_input_overrun_samples_total",
        "Microphone samples dropped because the DSP thread fell behind."
    );
    describe_counter!(
        "kiosk_audio_output_underrun_samples_total",
        "Speaker samples filled with silence for want of audio."
    );
    describe_counter!(
        "kiosk_audio_input_held_ms_total",
        "Milliseconds the microphone was held to real time: it runs faster (no clock)."
    );
    describe_counter!(
        "kiosk_audio_output_held_ms_total",
        "Milliseconds the speaker was held to real time: it runs faster (no clock)."
    );
    describe_counter!("kiosk_vad_utterances_total", "Utterances the VAD found.");
    describe_counter!("kiosk_sessions_total", "Sessions ended, by end_reason.");
    describe_histogram!("kiosk_session_duration_seconds", "Session length.");
    describe_counter!(
        "kiosk_http_requests_total",
        "Status server requests by route and status code."
    );
    describe_counter!(
        "kiosk_audio_packets_undecodable_total",
        "Packets of the bot's audio that were not Opus or did not decode; each was concealed."
    );
    describe_counter!(
        "kiosk_audio_packets_oversize_total",
        "Packets of the bot's audio too large to queue; dropped and concealed as lost."
    );
    describe_gauge!(
        "kiosk_audio_engine_up",
        "1 while the audio engine's DSP loop runs; 0 while it waits to be restarted after a failure."
    );
    describe_gauge!(
        "kiosk_audio_dsp_realtime_priority",
        "The audio DSP thread's real-time (SCHED_FIFO) priority; 0 while it runs at normal priority."
    );
    describe_counter!(
        "kiosk_audio_engine_failures_total",
        "Times the audio engine's DSP loop failed with an error."
    );
    describe_counter!(
        "kiosk_audio_engine_restarts_total",
        "Times the audio engine's DSP loop was restarted after a failure."
    );
    describe_gauge!(
        "kiosk_audio_engine_last_failure_timestamp_seconds",
        "When the audio engine last failed (Unix time); its error is on the status page."
    );
    describe_counter!(
        "kiosk_audio_packets_late_total",
        "Packets of the bot's audio that arrived after their playout time."
    );
    describe_counter!(
        "kiosk_audio_packets_fec_recovered_total",
        "Lost packets of the bot's audio rebuilt from the next packet's in-band FEC."
    );
    describe_gauge!(
        "kiosk_audio_jitter_buffer_delay_seconds",
        "Audio the jitter buffer held when it last played a packet of the bot's audio."
    );
    describe_gauge!(
        "kiosk_audio_echo_erle_db",
        "Echo return loss enhancement the echo canceller reports, in dB."
    );
    describe_gauge!(
        "kiosk_audio_echo_delay_seconds",
        "Speaker-to-microphone delay the echo canceller has locked on to."
    );
    describe_gauge!(
        "kiosk_audio_capture_latency_seconds",
        "From the microphone's last sample of a packet to the packet leaving the DSP thread (mean, max)."
    );
    describe_gauge!(
        "kiosk_cloud_up",
        "1 if the last check of the service (daily, agent) succeeded."
    );
    describe_gauge!(
        "kiosk_cloud_probe_seconds",
        "How long the last check of the service took."
    );
    describe_counter!(
        "kiosk_cloud_probes_total",
        "Service checks by service and result (ok, degraded, down)."
    );
    describe_gauge!(
        "kiosk_link_rtt_seconds",
        "Round-trip time to the agent on the current or last call (RTCP)."
    );
    describe_gauge!(
        "kiosk_link_jitter_seconds",
        "Interarrival jitter of the agent's audio on the current or last call."
    );
    describe_gauge!(
        "kiosk_link_loss_ratio",
        "Share of packets lost on the current or last call, by direction (out: to the agent)."
    );
    describe_gauge!(
        "kiosk_link_loss_recent_ratio",
        "Share of our packets the agent reported lost over its latest report interval."
    );
    describe_gauge!(
        "kiosk_link_agent_jitter_seconds",
        "Interarrival jitter of our audio as the agent reports it."
    );
    describe_gauge!("kiosk_link_up", "1 while a call to the agent is open.");
    describe_counter!(
        "kiosk_link_packets_sent_total",
        "Audio packets sent to the agent; 50 a second while a call is live, silences included."
    );
    describe_gauge!(
        "kiosk_link_packets_sent_per_second",
        "Audio packets sent to the agent per second over the last few seconds of the current call."
    );
}

/// The latest call statistics.
pub fn record_link(link: &LinkView) {
    gauge!("kiosk_link_up").set(f64::from(u8::from(link.live)));
    if let Some(rtt) = link.rtt_ms {
        gauge!("kiosk_link_rtt_seconds").set(rtt / 1000.0);
    }
    if let Some(jitter) = link.jitter_ms {
        gauge!("kiosk_link_jitter_seconds").set(jitter / 1000.0);
    }
    gauge!("kiosk_link_loss_ratio", "direction" => "out").set(link.loss_out_percent / 100.0);
    gauge!("kiosk_link_loss_ratio", "direction" => "in").set(link.loss_in_percent / 100.0);
    gauge!("kiosk_link_copies_sent").set(link.copies_sent as f64);
    if let Some(recent) = link.loss_out_recent_percent {
        gauge!("kiosk_link_loss_recent_ratio", "direction" => "out").set(recent / 100.0);
    }
    if let Some(jitter) = link.agent_jitter_ms {
        gauge!("kiosk_link_agent_jitter_seconds").set(jitter / 1000.0);
    }
    gauge!("kiosk_link_packets_sent_per_second").set(if link.live {
        link.send_packets_per_second
    } else {
        0.0
    });
}

/// Makes sure the recorder exists before anything records.
pub fn init() {
    recorder();
}

pub fn record_store_recovery() {
    counter!("kiosk_store_recoveries_total").increment(1);
}

/// Copies the audio engine's counters into the exposition.
pub fn record_audio(a: &AudioMetrics) {
    use std::sync::atomic::Ordering::Relaxed;
    let total = |name: &'static str, v: &std::sync::atomic::AtomicU64| {
        counter!(name).absolute(AudioMetrics::get(v));
    };
    total(
        "kiosk_audio_input_overrun_samples_total",
        &a.input_overrun_samples,
    );
    total(
        "kiosk_audio_output_underrun_samples_total",
        &a.output_underrun_samples,
    );
    total("kiosk_audio_input_held_ms_total", &a.input_held_ms);
    total("kiosk_audio_output_held_ms_total", &a.output_held_ms);
    total("kiosk_vad_utterances_total", &a.utterances);
    total("kiosk_audio_barge_ins_total", &a.barge_ins);
    total(
        "kiosk_audio_buffer_overflow_packets_total",
        &a.buffer_overflow_packets,
    );
    total("kiosk_audio_packets_concealed_total", &a.packets_concealed);
    total("kiosk_audio_packets_late_total", &a.packets_late);
    total(
        "kiosk_audio_packets_fec_recovered_total",
        &a.packets_fec_recovered,
    );
    total("kiosk_audio_frames_inserted_total", &a.frames_inserted);
    total("kiosk_audio_frames_removed_total", &a.frames_removed);
    gauge!("kiosk_audio_jitter_buffer_delay_seconds")
        .set(a.jitter_delay_ms.load(Relaxed) as f64 / 1000.0);
    total(
        "kiosk_audio_packets_undecodable_total",
        &a.packets_undecodable,
    );
    total("kiosk_audio_packets_oversize_total", &a.packets_oversize);
    total("kiosk_audio_device_errors_total", &a.device_errors);
    total("kiosk_audio_device_reopens_total", &a.device_reopens);
    total("kiosk_audio_engine_failures_total", &a.engine_failures);
    total("kiosk_audio_engine_restarts_total", &a.engine_restarts);
    gauge!("kiosk_audio_engine_up").set(f64::from(u8::from(!a.is_engine_down())));
    gauge!("kiosk_audio_dsp_realtime_priority").set(f64::from(a.dsp_scheduling.get().priority()));
    if let Some(failure) = a.last_engine_failure() {
        gauge!("kiosk_audio_engine_last_failure_timestamp_seconds")
            .set(failure.at.as_millisecond() as f64 / 1000.0);
    }
    gauge!("kiosk_audio_input_open").set(f64::from(u8::from(a.input_open.load(Relaxed))));
    gauge!("kiosk_audio_output_open").set(f64::from(u8::from(a.output_open.load(Relaxed))));
    gauge!("kiosk_audio_level_dbfs").set(f64::from(a.level().0));
    let echo = a.echo();
    if let Some(erle) = echo.erle_db {
        gauge!("kiosk_audio_echo_erle_db").set(f64::from(erle));
    }
    if let Some(delay) = echo.delay {
        gauge!("kiosk_audio_echo_delay_seconds").set(f64::from(delay.0) / 1000.0);
    }
    if let Some((mean_us, max_us)) = a.capture_latency_us() {
        gauge!("kiosk_audio_capture_latency_seconds", "stat" => "mean").set(mean_us as f64 / 1e6);
        gauge!("kiosk_audio_capture_latency_seconds", "stat" => "max").set(max_us as f64 / 1e6);
    }
}

/// Renders the text exposition, refreshing the figures read on demand.
pub fn render(
    counts: Option<Counts>,
    backlog: Option<&Backlog>,
    db_bytes: u64,
    uptime_s: f64,
) -> String {
    let r = recorder();
    r.process.collect();
    if let Some(c) = counts {
        gauge!("kiosk_store_sessions").set(c.sessions as f64);
        gauge!("kiosk_store_open_sessions").set(c.open_sessions as f64);
        gauge!("kiosk_store_transcripts").set(c.transcripts as f64);
        gauge!("kiosk_store_unsynced_transcripts").set(c.unsynced_transcripts as f64);
    }
    if let Some(b) = backlog {
        gauge!("kiosk_sync_backlog_transcripts").set(b.transcripts as f64);
        gauge!("kiosk_sync_backlog_sessions").set(b.sessions as f64);
        gauge!("kiosk_sync_parked_batches").set(b.parked.len() as f64);
    }
    gauge!("kiosk_store_size_bytes").set(db_bytes as f64);
    gauge!("kiosk_uptime_seconds").set(uptime_s);
    r.handle.run_upkeep();
    r.handle.render()
}

/// Counts every request by its route pattern (never the raw path, whose
/// ids would make the series unbounded) and status code.
pub async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    counter!(
        "kiosk_http_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}
