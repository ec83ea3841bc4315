//! The status document turned into what the page shows: the overall
//! verdict at the top, and every figure in words and local time. Raw
//! details travel along for the `<details>` under each line.

use jiff::Timestamp;

use super::api::StatusDoc;
use super::charts::{self, Bar, Series, Window};
use super::history::{self, HistoryDoc};
use super::verdict::{Verdict, health_word};
use super::words::{self, Clock};
use crate::health::Health;

/// A line with a state colour, words, and the raw detail behind them.
pub struct Item {
    /// What it is ("microphone", "daily").
    pub name: String,
    /// CSS class: `ok`, `degraded`, `down` or `muted`.
    pub class: &'static str,
    /// What a technician reads.
    pub words: String,
    /// The raw detail, one tap away.
    pub detail: String,
}

/// The session in progress.
pub struct SessionLine {
    /// First 8 characters of the id.
    pub short_id: String,
    /// The whole id, in a tooltip.
    pub id: String,
    /// "since 14:02:13 (1 min 12 s)".
    pub since: String,
}

/// One row of the last sessions.
pub struct SessionRow {
    /// The whole id, for the link and tooltip.
    pub id: String,
    /// Local start time.
    pub started: String,
    /// "3 min ago".
    pub ago: String,
    /// "1 min 12 s", or "running".
    pub length: String,
    /// Why it ended, in words.
    pub end: String,
    /// The stored reason (`idle`, `link_lost`).
    pub end_code: String,
    /// A failure (for the colour).
    pub failed: bool,
    /// Transcript lines.
    pub lines: u64,
}

/// One warning or error.
pub struct EventLine {
    /// Local time.
    pub at: String,
    /// `warn` or `error`.
    pub level: &'static str,
    /// The message.
    pub message: String,
}

/// The call's figures in words.
pub struct CallLines {
    /// "open", "last call", "none yet".
    pub live: String,
    /// "23.4 ms" or "—".
    pub rtt: String,
    /// "1.2 ms" or "—".
    pub jitter: String,
    /// "0.0 % / 0.0 %".
    pub loss: String,
    /// The bot's audio since start: packets concealed (of them rebuilt
    /// from FEC), frames inserted to deepen the jitter buffer and removed
    /// to cut its delay, and its delay against its target.
    pub playout: String,
    /// "32 / 40 kbit/s".
    pub rate: String,
    /// Restarts of the call's transport.
    pub restarts: String,
    /// "measured 3 s ago".
    pub updated: String,
}

/// One picture with its caption and legend.
pub struct Picture {
    /// The caption.
    pub title: &'static str,
    /// Inline SVG, built by [`charts`] from numbers only.
    pub svg: String,
    /// (CSS class, name) of each line.
    pub legend: Vec<(&'static str, &'static str)>,
    /// Said under the picture when it has nothing to show yet.
    pub empty: Option<&'static str>,
}

/// The last self-test, for the page.
pub struct SelfTestView {
    /// `ok` or `down`.
    pub class: &'static str,
    /// The verdict in one sentence.
    pub summary: String,
    /// "3 min ago (14:02:13)".
    pub when: String,
    /// Speaker, microphone, loop delay, level, noise floor: (name, words).
    pub lines: Vec<(&'static str, String)>,
}

/// Everything the page prints, already in words.
pub struct PageView {
    /// The last self-test since start.
    pub self_test: Option<SelfTestView>,
    /// The last hour and day, drawn.
    pub pictures: Vec<Picture>,
    /// The verdict for the banner.
    pub verdict: Verdict,
    /// The session state in words.
    pub state: &'static str,
    /// "up 2 h 5 min".
    pub uptime: String,
    /// The zone the times are in.
    pub zone: String,
    /// The session in progress.
    pub session: Option<SessionLine>,
    /// Devices.
    pub components: Vec<Item>,
    /// Cloud services.
    pub cloud: Vec<Item>,
    /// The microphone level, "-42 dBFS", or "—" with no microphone.
    pub level: String,
    /// The level for the meter; the meter's floor with no microphone.
    pub meter: f32,
    /// The call's figures.
    pub call: CallLines,
    /// "12 lines in 2 sessions waiting" or "nothing waiting".
    pub backlog: String,
    /// When sync last worked.
    pub sync_success: String,
    /// Sync's last error.
    pub sync_error: String,
    /// "4.2 MB".
    pub store_size: String,
    /// The last sessions.
    pub sessions: Vec<SessionRow>,
    /// Warnings and errors, newest first.
    pub events: Vec<EventLine>,
}

fn class(h: Option<Health>) -> &'static str {
    match h {
        Some(Health::Ok) => "ok",
        Some(Health::Degraded) => "degraded",
        Some(Health::Down) => "down",
        None => "muted",
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} bytes"),
        1_000..1_000_000 => format!("{:.0} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

impl PageView {
    /// Puts `doc` into words on `clock`'s time.
    pub fn new(
        doc: &StatusDoc,
        history: &HistoryDoc,
        mic_level: Option<f32>,
        clock: &Clock,
    ) -> Self {
        let now = Timestamp::now();
        let session = doc.session.as_ref().map(|s| SessionLine {
            short_id: words::short_id(&s.id).to_string(),
            id: s.id.clone(),
            since: format!(
                "since {} ({})",
                clock.time(s.started_at, now),
                words::duration(words::secs_between(s.started_at, now))
            ),
        });
        let components = doc
            .components
            .iter()
            .map(|c| Item {
                name: c.name.to_string(),
                class: class(Some(c.health)),
                words: health_word(c.health).to_string(),
                detail: c.detail.clone(),
            })
            .collect();
        let cloud = doc
            .cloud
            .iter()
            .map(|c| {
                let mut detail = format!("{}: {}", c.target, c.detail);
                if let Some(at) = c.checked_at {
                    detail.push_str(&format!("; checked {}", clock.ago_at(at, now)));
                }
                if let Some(e) = &c.last_error {
                    detail.push_str(&format!(
                        "; last error {}: {}",
                        clock.ago_at(e.at, now),
                        e.message
                    ));
                }
                Item {
                    name: c.service.name().to_string(),
                    class: class(c.health),
                    words: words::cloud(c, now),
                    detail,
                }
            })
            .collect();
        let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1} ms"));
        let playout = doc.playout.as_ref().map_or("—".to_string(), |p| {
            format!(
                "{} concealed ({} by FEC, {} inserted, {} removed) / {} ms (target {} ms)",
                p.packets_concealed,
                p.packets_fec_recovered,
                p.frames_inserted,
                p.frames_removed,
                p.jitter_delay_ms,
                p.jitter_target_ms
            )
        });
        let call = match &doc.link {
            Some(l) => CallLines {
                live: if l.live { "open" } else { "last call" }.into(),
                rtt: ms(l.rtt_ms),
                jitter: ms(l.jitter_ms),
                loss: format!(
                    "{:.1} % / {:.1} %{}",
                    l.loss_out_percent,
                    l.loss_in_percent,
                    if l.sending_twice {
                        " (every packet out sent twice)"
                    } else {
                        ""
                    }
                ),
                playout,
                rate: format!("{:.0} / {:.0} kbit/s", l.send_kbps, l.recv_kbps),
                restarts: l.restarts.to_string(),
                updated: l
                    .updated_at
                    .map(|t| format!("measured {}", words::ago(t, now)))
                    .unwrap_or_default(),
            },
            None => CallLines {
                live: "none yet".into(),
                rtt: "—".into(),
                jitter: "—".into(),
                loss: "—".into(),
                playout,
                rate: "—".into(),
                restarts: "—".into(),
                updated: String::new(),
            },
        };
        let b = &doc.sync.backlog;
        let backlog = if b.transcripts == 0 && b.sessions == 0 {
            "nothing waiting".to_string()
        } else {
            let oldest = b
                .oldest
                .map(|t| format!(", oldest {}", words::ago(t, now)))
                .unwrap_or_default();
            format!(
                "{} in {} waiting{oldest}",
                words::count(b.transcripts, "line"),
                words::count(b.sessions, "session")
            )
        };
        let sessions = doc
            .recent_sessions
            .iter()
            .map(|s| {
                let r = &s.session;
                let id = r.id.to_string();
                let code = r.end_reason.clone().unwrap_or_default();
                SessionRow {
                    started: clock.time(r.started_at, now),
                    ago: words::ago(r.started_at, now),
                    length: s
                        .duration_s()
                        .map_or("running".into(), |d| words::duration(d.max(0) as u64)),
                    end: r
                        .end_reason
                        .as_deref()
                        .map_or("—", words::end_reason)
                        .to_string(),
                    failed: words::end_reason_failed(&code),
                    end_code: code,
                    lines: s.transcripts,
                    id,
                }
            })
            .collect();
        let events = doc
            .recent_events
            .iter()
            .rev()
            .map(|e| EventLine {
                at: clock.time(e.at, now),
                level: e.level,
                message: e.message.clone(),
            })
            .collect();
        let self_test = doc.self_test.as_ref().map(|t| {
            let figure = |v: Option<f64>, unit: &str| {
                v.map_or("—".to_string(), |v| format!("{v:.0} {unit}"))
            };
            let part = |ok: bool, detail: &str| {
                format!("{}: {detail}", if ok { "works" } else { "FAILED" })
            };
            SelfTestView {
                class: if t.passed { "ok" } else { "down" },
                summary: t.summary.clone(),
                when: clock.ago_at(t.at, now),
                lines: vec![
                    ("speaker", part(t.speaker.ok, &t.speaker.detail)),
                    ("microphone", part(t.microphone.ok, &t.microphone.detail)),
                    ("loop delay", figure(t.loop_delay_ms, "ms")),
                    ("loop level", figure(t.loop_level_dbfs, "dBFS")),
                    ("noise floor", figure(t.noise_floor_dbfs, "dBFS")),
                ],
            }
        });
        Self {
            self_test,
            pictures: pictures(history, clock, now),
            verdict: doc.health.clone(),
            state: words::state(doc.state),
            uptime: words::duration(doc.uptime_s),
            zone: clock.zone_name().to_string(),
            session,
            components,
            cloud,
            level: mic_level.map_or("—".into(), |l| format!("{l:.0} dBFS")),
            meter: mic_level.unwrap_or(-90.0),
            call,
            backlog,
            sync_success: doc
                .sync
                .status
                .last_success
                .map_or("—".into(), |t| clock.ago_at(t, now)),
            sync_error: doc.sync.status.last_error.as_ref().map_or("—".into(), |e| {
                format!("{} ({})", e.message, words::ago(e.at, now))
            }),
            store_size: bytes(doc.store.size_bytes),
            sessions,
            events,
        }
    }
}

/// The last hour's lines, its sessions, and the day's sessions per hour.
fn pictures(h: &HistoryDoc, clock: &Clock, now: Timestamp) -> Vec<Picture> {
    let window = Window { now, clock };
    let series = |class, label, f: &dyn Fn(&history::Point) -> Option<f64>| Series {
        class,
        label,
        values: h.points.iter().map(|p| (p.at, f(p))).collect(),
    };
    let line = |title, unit, range, series: Vec<Series>, empty| {
        let legend = series.iter().map(|s| (s.class, s.label)).collect();
        let has_data = series
            .iter()
            .any(|s| s.values.iter().any(|(_, v)| v.is_some()));
        Picture {
            title,
            svg: charts::lines(&window, title, unit, range, &series),
            legend,
            empty: (!has_data).then_some(empty),
        }
    };
    let collecting = "Collecting: a point every 10 s.";
    let no_call = "No call in the last hour.";
    let mut pictures = vec![
        line(
            "Microphone level",
            "dBFS",
            (-90.0, 0.0),
            vec![
                series("s1", "peak", &|p| p.mic_peak_dbfs.map(f64::from)),
                series("s2", "noise floor", &|p| p.mic_floor_dbfs.map(f64::from)),
            ],
            collecting,
        ),
        line(
            "Call round trip and jitter",
            "ms",
            (0.0, 50.0),
            vec![
                series("s1", "round trip", &|p| p.rtt_ms),
                series("s2", "jitter", &|p| p.jitter_ms),
            ],
            no_call,
        ),
        line(
            "Call packet loss",
            "%",
            (0.0, 5.0),
            vec![series("s3", "loss (worse direction)", &|p| p.loss_percent)],
            no_call,
        ),
        line(
            "Upload backlog",
            "lines",
            (0.0, 10.0),
            vec![series("s1", "lines waiting", &|p| {
                p.backlog_lines.map(|n| n as f64)
            })],
            collecting,
        ),
    ];
    let bars: Vec<Bar> = h
        .sessions
        .iter()
        .map(|s| {
            let class = match (&s.ended_at, history::failed(s.end_reason.as_deref())) {
                (None, _) => "running",
                (Some(_), true) => "failed",
                (Some(_), false) => "ended",
            };
            let to = s.ended_at.unwrap_or(now);
            let end = s.end_reason.as_deref().map_or("running", words::end_reason);
            Bar {
                from: s.started_at,
                to,
                class,
                title: format!(
                    "{} · {} · {}",
                    clock.time(s.started_at, now),
                    words::duration(words::secs_between(s.started_at, to)),
                    end
                ),
            }
        })
        .collect();
    pictures.push(Picture {
        title: "Sessions in the last hour",
        svg: charts::bars(&window, "Sessions in the last hour", &bars),
        legend: vec![
            ("ended", "ended"),
            ("failed", "failed"),
            ("running", "running"),
        ],
        empty: bars.is_empty().then_some("No session in the last hour."),
    });
    if let Some(hours) = &h.sessions_per_hour {
        let counts: Vec<(Timestamp, u32, u32)> = hours
            .iter()
            .map(|c| (c.hour_start, c.sessions, c.failed))
            .collect();
        pictures.push(Picture {
            title: "Sessions per hour, last 24 hours",
            svg: charts::per_hour(clock, "Sessions per hour, last 24 hours", &counts),
            legend: vec![("ended", "sessions"), ("failed", "failed")],
            empty: None,
        });
    }
    pictures
}
