//! How the page says things: states as a technician would say them, times
//! on the kiosk's clock, durations and ages in minutes and seconds, cloud
//! checks as sentences. The JSON API keeps the machine-readable values;
//! this is only for people.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::health::Health;
use crate::reachability::CloudCheck;

/// A session state (`Published::state`) in plain words.
pub fn state(name: &str) -> &'static str {
    match name {
        "idle" => "Idle",
        "provisioning" | "connecting" => "Connecting…",
        "listening" => "Listening",
        "user_speaking" => "Visitor speaking",
        "bot_thinking" => "Assistant thinking",
        "bot_speaking" => "Assistant speaking",
        "reconnecting" => "Reconnecting…",
        "ending" => "Ending the call",
        _ => "Unknown",
    }
}

/// Why a session ended (`sessions.end_reason`) in plain words.
pub fn end_reason(reason: &str) -> &'static str {
    match reason {
        "idle" => "visitor went quiet",
        "max_duration" => "reached the time limit",
        "agent_left" => "assistant hung up",
        "shutdown" => "service stopped",
        "stopped" => "stopped by a technician",
        "provision_failed" => "cloud refused",
        "connect_failed" => "call did not connect",
        "link_lost" => "call dropped",
        "crashed" => "gateway crashed",
        _ => "other",
    }
}

/// Whether an end reason is a failure worth a warning colour.
pub fn end_reason_failed(reason: &str) -> bool {
    matches!(
        reason,
        "provision_failed" | "connect_failed" | "link_lost" | "crashed"
    )
}

/// A length of time: "42 s", "1 min 12 s", "2 h 5 min", "3 d 4 h".
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) if s == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, 0) => format!("{h} h"),
        (0, _, _) => format!("{h} h {m} min"),
        (_, 0, _) => format!("{d} d"),
        _ => format!("{d} d {h} h"),
    }
}

/// The kiosk's clock: local times for people on site.
#[derive(Debug, Clone)]
pub struct Clock {
    zone: TimeZone,
}

impl Clock {
    /// Times in `zone`.
    pub fn new(zone: TimeZone) -> Self {
        Self { zone }
    }

    /// The system's zone (UTC if it has none).
    pub fn system() -> Self {
        Self::new(TimeZone::system())
    }

    /// The zone's name, as shown beside times ("Europe/Paris", "UTC").
    pub fn zone_name(&self) -> &str {
        self.zone.iana_name().unwrap_or("local time")
    }

    /// The zone itself, to cut time into local hours.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// "14:02:13" today, "30 Nov 14:02" on another day.
    pub fn time(&self, at: Timestamp, now: Timestamp) -> String {
        let local = at.to_zoned(self.zone.clone());
        if local.date() == now.to_zoned(self.zone.clone()).date() {
            local.strftime("%H:%M:%S").to_string()
        } else {
            local.strftime("%-d %b %H:%M").to_string()
        }
    }

    /// "3 min ago (14:02:13)": an age, and the time for the record.
    pub fn ago_at(&self, at: Timestamp, now: Timestamp) -> String {
        format!("{} ({})", ago(at, now), self.time(at, now))
    }
}

/// How long ago: "just now", "42 s ago", "3 min ago", "2 h ago", "2 d ago".
pub fn ago(at: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(at).as_secs();
    match secs {
        i64::MIN..5 => "just now".into(),
        5..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// "1 line", "3 lines".
pub fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// The first 8 characters of a session id: enough to tell sessions apart
/// on a page, the whole id stays in a tooltip and the session's page.
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A cloud check as a sentence: "reachable, 42 ms", "refused the API
/// key", "no answer for 2 min". The prober's own detail stays available
/// beside it for the record.
pub fn cloud(check: &CloudCheck, now: Timestamp) -> String {
    let Some(health) = check.health else {
        return "not checked yet".into();
    };
    let detail = check.detail.as_str();
    match health {
        Health::Ok => match check.latency_ms {
            Some(ms) => format!("reachable, {ms} ms"),
            None => "reachable".into(),
        },
        Health::Down if detail.starts_with("API key refused") => "refused the API key".into(),
        Health::Down => match check.last_ok_at {
            Some(ok) => format!(
                "no answer for {}",
                duration(now.duration_since(ok).as_secs().max(0) as u64)
            ),
            None => "no answer yet".into(),
        },
        Health::Degraded if detail.starts_with("rate limited") => {
            "answers, but is rate limiting us".into()
        }
        Health::Degraded => "answers, but reports trouble".into(),
    }
}

/// Seconds between two timestamps, never negative.
pub fn secs_between(from: Timestamp, to: Timestamp) -> u64 {
    to.duration_since(from).as_secs().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn before(at: Timestamp, secs: i64) -> Timestamp {
        at.checked_sub(SignedDuration::from_secs(secs)).unwrap()
    }
    use crate::reachability::Service;

    #[test]
    fn durations_read_as_a_technician_says_them() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(72), "1 min 12 s");
        assert_eq!(duration(120), "2 min");
        assert_eq!(duration(3600 * 2 + 300 + 7), "2 h 5 min");
        assert_eq!(duration(86_400 * 3 + 3600 * 4), "3 d 4 h");
    }

    #[test]
    fn ages_are_relative() {
        let now: Timestamp = "2026-12-01T13:20:00Z".parse().unwrap();
        assert_eq!(ago(before(now, 2), now), "just now");
        assert_eq!(ago(before(now, 42), now), "42 s ago");
        assert_eq!(ago(before(now, 190), now), "3 min ago");
        assert_eq!(ago(before(now, 7300), now), "2 h ago");
    }

    #[test]
    fn times_are_on_the_kiosks_clock() {
        let clock = Clock::new(TimeZone::get("Europe/Paris").unwrap());
        let now: Timestamp = "2026-12-01T13:20:00Z".parse().unwrap();
        let at: Timestamp = "2026-12-01T13:19:42.160515804Z".parse().unwrap();
        assert_eq!(clock.time(at, now), "14:19:42");
        assert_eq!(clock.time(before(at, 86_400), now), "30 Nov 14:19");
        assert_eq!(clock.ago_at(at, now), "17 s ago (14:19:42)");
    }

    #[test]
    fn states_and_ids_are_short_and_plain() {
        assert_eq!(state("bot_speaking"), "Assistant speaking");
        assert_eq!(state("reconnecting"), "Reconnecting…");
        assert_eq!(short_id("0193a6f0-1c2b-7d3e-8f40-123456789abc"), "0193a6f0");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn cloud_checks_read_as_sentences() {
        let now: Timestamp = "2026-12-01T13:20:00Z".parse().unwrap();
        let mut check = CloudCheck {
            service: Service::Daily,
            target: "https://api.daily.co".into(),
            health: Some(Health::Ok),
            detail: "API answers and accepts the key".into(),
            latency_ms: Some(42),
            checked_at: Some(now),
            last_ok_at: Some(now),
            last_error: None,
        };
        assert_eq!(cloud(&check, now), "reachable, 42 ms");
        check.health = Some(Health::Down);
        check.detail = "API key refused (HTTP 401/403)".into();
        assert_eq!(cloud(&check, now), "refused the API key");
        check.detail = "no answer within 5 s".into();
        check.last_ok_at = Some(before(now, 125));
        assert_eq!(cloud(&check, now), "no answer for 2 min 5 s");
        check.health = None;
        assert_eq!(cloud(&check, now), "not checked yet");
    }
}
