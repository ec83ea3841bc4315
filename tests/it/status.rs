//! The status server as a technician (and an intruder) meets it: the auth
//! matrix, limits, headers, and that nothing secret leaks.

use crate::common;
use crate::fake_upstream;

use std::time::Duration;

use common::{Daemon, write_config};
use fake_upstream::FakeUpstream;
use jiff::Timestamp;
use kiosk_gateway::store::{NewSession, NewTranscript, Role, SessionEnd, SessionId, Store};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};

const TOKEN: &str = "technician-token-8c1f";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn seed(dir: &std::path::Path) -> SessionId {
    let (mut store, _) = Store::open(&dir.join("kiosk.db")).unwrap();
    let id = SessionId::new();
    let t = Timestamp::now();
    store
        .start_session(&NewSession {
            id,
            kiosk_id: "test-kiosk".into(),
            started_at: t,
            room_name: Some("kiosk-test-kiosk-abc".into()),
            room_url: None,
            agent_session_id: None,
        })
        .unwrap();
    for (role, text) in [
        (Role::User, "my name is Ada Lovelace"),
        (Role::Bot, "welcome, Ada"),
    ] {
        store
            .add_transcript(&NewTranscript {
                session_id: id,
                role,
                text: text.into(),
                is_final: true,
                confidence: None,
                spoken_at: t,
                received_at: t,
            })
            .unwrap();
    }
    store
        .end_session(
            id,
            &SessionEnd {
                ended_at: t,
                reason: "idle".into(),
                user_speech_ms: 1500,
                bot_speech_ms: 900,
            },
        )
        .unwrap();
    id
}

async fn status_of(r: reqwest::Response) -> StatusCode {
    r.status()
}

#[tokio::test]
async fn with_a_token_everything_but_probes_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let session = seed(dir.path());
    let config = write_config(dir.path(), "");
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN)],
    );
    let c = client();
    let url = |p: &str| format!("{}{p}", d.url);
    let bearer = |t: &str| format!("Bearer {t}");

    // The matrix: route × (no token, wrong token, right token).
    let routes = [
        "/api/status".to_string(),
        "/api/sessions".to_string(),
        format!("/api/sessions/{session}"),
        "/metrics".to_string(),
        "/api/history".to_string(),
        "/part/status".to_string(),
    ];
    for route in &routes {
        let none = c.get(url(route)).send().await.unwrap();
        assert_eq!(
            none.status(),
            StatusCode::UNAUTHORIZED,
            "{route} without token"
        );
        let wrong = c
            .get(url(route))
            .header("Authorization", bearer("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{route} wrong token"
        );
        let right = c
            .get(url(route))
            .header("Authorization", bearer(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), StatusCode::OK, "{route} right token");
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            status_of(c.get(url(probe)).send().await.unwrap()).await,
            StatusCode::OK
        );
    }
    // A browser without a login is sent to the form.
    let page = c
        .get(url("/"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/login");
    let post = c.post(url("/api/sync")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);

    // Transcripts: personal data, never cached.
    let detail = c
        .get(url(&format!("/api/sessions/{session}")))
        .header("Authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(detail.headers()[CACHE_CONTROL], "no-store");
    let doc: serde_json::Value = detail.json().await.unwrap();
    assert_eq!(doc["transcripts"][0]["text"], "my name is Ada Lovelace");
    assert_eq!(doc["end_reason"], "idle");

    // The last hour and day: the seeded session is on both time lines.
    let history: serde_json::Value = c
        .get(url("/api/history"))
        .header("Authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["interval_s"], 10);
    assert_eq!(history["sessions"][0]["id"], session.to_string());
    let hours = history["sessions_per_hour"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    let total: u64 = hours.iter().map(|h| h["sessions"].as_u64().unwrap()).sum();
    assert_eq!(total, 1, "{history}");
}

#[tokio::test]
async fn login_form_sets_a_strict_http_only_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let session = seed(dir.path());
    let config = write_config(dir.path(), "");
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN)],
    );
    let c = client();
    let url = |p: &str| format!("{}{p}", d.url);

    let form = c.get(url("/login")).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let csp = form.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'nonce-"),
        "{csp}"
    );

    let wrong = c
        .post(url("/login"))
        .form(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let ok = c
        .post(url("/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let set = ok.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(TOKEN), "the cookie is not the token");
    let cookie = set.split(';').next().unwrap().to_string();

    let page = c
        .get(url("/"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("/sessions/{session}")),
        "sessions open their transcript"
    );
    let transcript = c
        .get(url(&format!("/sessions/{session}")))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(transcript.contains("my name is Ada Lovelace"));
    // Times in plain words and the kiosk's clock, not raw UTC stamps.
    assert!(transcript.contains("visitor went quiet"), "{transcript}");
    assert!(!transcript.contains("Z</td>"), "{transcript}");
    assert!(!transcript.contains(">2026-"), "{transcript}");

    let out = c
        .post(url("/logout"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = c
        .get(url("/api/status"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED, "logged out");
}

#[tokio::test]
async fn without_a_token_the_page_is_open_on_loopback_but_transcripts_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let session = seed(dir.path());
    let config = write_config(dir.path(), "");
    let d = Daemon::start(dir.path(), &config, &[]);
    let c = client();
    let url = |p: &str| format!("{}{p}", d.url);
    let status: serde_json::Value = c
        .get(url("/api/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["technician"], false);
    assert_eq!(status["recent_sessions"][0]["end_reason"], "idle");
    let page = c.get(url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("idle") && !page.contains("Ada"));
    for route in [
        format!("/api/sessions/{session}"),
        format!("/sessions/{session}"),
    ] {
        let r = c.get(url(&route)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{route}");
    }
    assert_eq!(
        c.post(url("/api/sync")).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn limits_refuse_oversized_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN)],
    );
    let c = client();
    let big_form = format!("token={}", "x".repeat(100_000));
    let r = c
        .post(format!("{}/login", d.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(big_form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = c
        .get(format!("{}/healthz", d.url))
        .header("X-Padding", "y".repeat(64 * 1024))
        .send()
        .await;
    // hyper refuses the head (431) or closes the connection.
    assert!(
        r.as_ref().map_or(true, |r| r.status()
            == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "{r:?}"
    );
    assert_eq!(
        c.get(format!("{}/healthz", d.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn secrets_never_reach_the_page_the_api_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let upstream = FakeUpstream::start().await;
    let config = write_config(
        dir.path(),
        &format!("[sync]\nurl = \"{}\"\ninterval = \"1h\"\n", upstream.url),
    );
    let d = Daemon::start(
        dir.path(),
        &config,
        &[
            ("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN),
            ("KIOSK_GATEWAY_SYNC_TOKEN", fake_upstream::TOKEN),
            ("KIOSK_GATEWAY_DAILY_API_KEY", "daily-key-never-shown"),
        ],
    );
    let c = client();
    let mut seen = String::new();
    for route in ["/", "/api/status", "/metrics", "/api/sessions"] {
        let r = c
            .get(format!("{}{route}", d.url))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }
    seen.push_str(&d.stderr());
    for secret in [TOKEN, fake_upstream::TOKEN, "daily-key-never-shown"] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

#[tokio::test]
async fn sync_now_uploads_what_is_waiting() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let upstream = FakeUpstream::start().await;
    let config = write_config(
        dir.path(),
        &format!("[sync]\nurl = \"{}\"\ninterval = \"1h\"\n", upstream.url),
    );
    let d = Daemon::start(
        dir.path(),
        &config,
        &[
            ("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN),
            ("KIOSK_GATEWAY_SYNC_TOKEN", fake_upstream::TOKEN),
        ],
    );
    // The first interval tick syncs at start-up; add more after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.with(|r| r.transcripts.len()) < 2 {
        assert!(std::time::Instant::now() < deadline, "start-up sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seed(dir.path());
    let r = client()
        .post(format!("{}/api/sync", d.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    while upstream.with(|r| r.transcripts.len()) < 4 {
        assert!(std::time::Instant::now() < deadline, "sync now");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status: serde_json::Value = client()
        .get(format!("{}/api/status", d.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["sync"]["enabled"], true);
    assert!(status["sync"]["last_success"].is_string());
}

#[test]
fn binding_beyond_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    for cmd in ["check", "run"] {
        let out = common::command(&config)
            .arg(cmd)
            .env("KIOSK_GATEWAY_STATUS_LISTEN", "0.0.0.0:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("missing secret status.token"),
            "{cmd}: {stderr}"
        );
    }
}

/// The self-test from the page's API: a technician's POST only (token
/// always, same-origin rules as other POSTs), its verdict answered and
/// kept in `/api/status`. Without devices both parts fail, in words.
#[tokio::test]
async fn the_self_test_runs_for_a_technician_and_its_verdict_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[audio]\ninput = \"none\"\noutput = \"none\"\n");
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN)],
    );
    let c = client();
    let url = |p: &str| format!("{}{p}", d.url);
    let anonymous = c.post(url("/api/selftest")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let run = c
        .post(url("/api/selftest"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), StatusCode::OK);
    let report: serde_json::Value = run.json().await.unwrap();
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(
        report["summary"],
        "Failed: speaker: no speaker open: nothing was played"
    );
    assert_eq!(
        report["microphone"]["detail"],
        "no microphone open: nothing was recorded"
    );
    let status: serde_json::Value = c
        .get(url("/api/status"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["self_test"], report);
    // The agent of this config is unreachable too: the kiosk is down, and
    // the failed self-test is one of the reasons.
    let reasons = status["health"]["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r
            .as_str()
            .unwrap()
            .starts_with("self-test: Failed: speaker")),
        "{status}"
    );
}
