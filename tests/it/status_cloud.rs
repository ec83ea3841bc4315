//! What a technician learns about the cloud from the status server before
//! any visitor arrives: is Daily reachable and does it take our key, does
//! the agent's endpoint answer — on `/api/status`, the page and `/metrics`.

use crate::common;
use crate::daily_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, get, wait_for};
use daily_support::{API_KEY, FakeDaily};

fn config(dir: &Path, daily_url: &str, agent_start_url: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[kiosk]\nid = \"cloud-kiosk\"\n\
             [session]\ntrigger = \"http\"\nprovision = \"daily\"\n\
             [daily]\nbase_url = \"{daily_url}\"\n\
             [agent]\nstart_url = \"{agent_start_url}\"\n\
             [audio]\ninput = \"none\"\noutput = \"none\"\n\
             [store]\npath = \"kiosk.db\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\nprobe_interval = \"1s\"\n\
             [log]\ntarget = \"stderr\"\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
    path
}

/// The check for `service` in a status document.
fn check(status: &serde_json::Value, service: &str) -> serde_json::Value {
    status["cloud"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == service)
        .cloned()
        .unwrap_or_else(|| panic!("no {service} check in {status:#}"))
}

/// Polls `/api/status` until the check for `service` satisfies `pred`.
async fn wait_check(
    d: &Daemon,
    service: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let what = format!("the {service} check");
    let s = wait_for(d, &what, Duration::from_secs(20), |s| {
        pred(&check(s, service))
    })
    .await;
    check(&s, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachable_cloud_shows_ok_and_a_refused_key_shows_down() {
    let daily = FakeDaily::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        daily.base_url().as_str(),
        daily.agent_start_url().as_str(),
    );

    // The right key: both services are up.
    let d = Daemon::start(
        dir.path(),
        &cfg,
        &[("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY)],
    );
    let check = wait_check(&d, "daily", |c| c["health"] == "ok").await;
    assert_eq!(check["target"], format!("http://{}", daily.addr));
    assert!(check["latency_ms"].as_u64().is_some());
    let agent = wait_check(&d, "agent", |c| c["health"] == "ok").await;
    // The start endpoint answers 405 to a probe: reachable, and nothing started.
    assert!(
        agent["detail"].as_str().unwrap().contains("405"),
        "{agent:#}"
    );
    assert!(daily.state.lock().unwrap().agent_start_bodies.is_empty());
    let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
    for line in [
        "kiosk_cloud_up{service=\"daily\"} 1",
        "kiosk_cloud_up{service=\"agent\"} 1",
        "kiosk_cloud_probes_total{service=\"daily\",result=\"ok\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let (_, page) = get(&format!("{}/", d.url)).await;
    assert!(page.contains("API answers and accepts the key"), "{page}");
    drop(d);

    // A key Daily refuses: a technician sees it without starting a session,
    // and the key itself is nowhere.
    let wrong_key = "wrong-key-must-not-leak-7731";
    let d = Daemon::start(
        dir.path(),
        &cfg,
        &[("KIOSK_GATEWAY_DAILY_API_KEY", wrong_key)],
    );
    let check = wait_check(&d, "daily", |c| c["health"] == "down").await;
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("API key refused"),
        "{check:#}"
    );
    assert!(check["last_error"]["message"].is_string());
    let (_, body) = get(&format!("{}/api/status", d.url)).await;
    let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
    assert!(metrics.contains("kiosk_cloud_up{service=\"daily\"} 0"));
    for text in [&body, &metrics, &d.stderr()] {
        assert!(!text.contains(wrong_key) && !text.contains(API_KEY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_shows_down_and_recovers_when_it_answers() {
    let daily = FakeDaily::start().await;
    // A port that refuses connections until the "agent" comes up on it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let agent_url = format!("http://127.0.0.1:{port}/start?token=secret-in-query");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), daily.base_url().as_str(), &agent_url);
    let d = Daemon::start(
        dir.path(),
        &cfg,
        &[("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY)],
    );

    let check = wait_check(&d, "agent", |c| c["health"] == "down").await;
    assert!(
        check["detail"].as_str().unwrap().contains("unreachable"),
        "{check:#}"
    );
    // Shown without its path and query, which may carry credentials.
    assert_eq!(check["target"], format!("http://127.0.0.1:{port}"));
    let (_, body) = get(&format!("{}/api/status", d.url)).await;
    assert!(!body.contains("secret-in-query"));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new().route(
        "/start",
        axum::routing::post(|| async { axum::http::StatusCode::OK }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let check = wait_check(&d, "agent", |c| c["health"] == "ok").await;
    assert!(
        check["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "the earlier failure stays visible: {check:#}"
    );
}
