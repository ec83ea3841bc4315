//! The status server against what a hostile web page or a guesser can do,
//! with real HTTP requests to the real daemon on 127.0.0.1: DNS rebinding
//! (foreign `Host`), cross-site requests riding on the login cookie, token
//! guessing, cookies over https, and secrets read the same way everywhere.

use crate::common;
use crate::fake_upstream;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::{Daemon, write_config};
use fake_upstream::FakeUpstream;
use kiosk_gateway::config::{Config, Env};
use reqwest::StatusCode;
use reqwest::header::{RETRY_AFTER, SET_COOKIE};
use secrecy::ExposeSecret;

const TOKEN: &str = "technician-token-5d2e";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A client whose connections come from `ip` (any of 127.0.0.0/8 reaches
/// a server on 127.0.0.1): another technician's laptop, as the server sees it.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn port_of(d: &Daemon) -> u16 {
    d.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A daemon with a status token and sync to a fake upstream (so
/// `POST /api/sync` has something to wake). `[status]` keys beyond the
/// listen address go in as environment overrides (`write_config` writes
/// that table itself).
async fn daemon(dir: &Path, env: &[(&str, &str)]) -> (Daemon, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let config = write_config(
        dir,
        &format!("[sync]\nurl = \"{}\"\ninterval = \"1h\"\n", upstream.url),
    );
    let mut all = vec![
        ("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN),
        ("KIOSK_GATEWAY_SYNC_TOKEN", fake_upstream::TOKEN),
    ];
    all.extend_from_slice(env);
    (Daemon::start(dir, &config, &all), upstream)
}

/// Signs in through the form as a browser on the page would; returns the
/// `Cookie` header value and the whole `Set-Cookie`.
async fn sign_in(c: &reqwest::Client, d: &Daemon) -> (String, String) {
    let r = c
        .post(format!("{}/login", d.url))
        .header("Origin", &d.url)
        .header("Sec-Fetch-Site", "same-origin")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

/// A raw HTTP/1.1 exchange, for requests reqwest will not make.
fn raw(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test]
async fn a_foreign_host_gets_421_and_the_servers_own_names_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _upstream) = daemon(
        dir.path(),
        &[(
            "KIOSK_GATEWAY_STATUS_ALLOWED_HOSTS",
            "status.lobby.example, 10.1.2.3:8443",
        )],
    )
    .await;
    let port = port_of(&d);
    let c = client();
    let get = |path: &'static str, host: String| {
        let c = c.clone();
        let url = format!("{}{path}", d.url);
        async move {
            c.get(url)
                .header("Host", host)
                .header("Authorization", format!("Bearer {TOKEN}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // A page on evil.example whose name now points at the kiosk: the right
    // token would not even be needed to read a loopback page without one.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("kiosk.evil.example:{port}"),
        format!("localhost:{}", port + 1),
        "10.1.2.3:8080".to_string(),
    ] {
        for path in ["/api/status", "/healthz", "/", "/metrics"] {
            assert_eq!(
                get(path, host.clone()).await,
                StatusCode::MISDIRECTED_REQUEST,
                "{host} {path}"
            );
        }
    }
    let r = c
        .post(format!("{}/login", d.url))
        .header("Host", "evil.example")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(r.headers().get(SET_COOKIE).is_none());

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
        format!("{hostname}:{port}"),
        "status.lobby.example".to_string(),
        "status.lobby.example:443".to_string(),
        "10.1.2.3:8443".to_string(),
    ] {
        assert_eq!(
            get("/api/status", host.clone()).await,
            StatusCode::OK,
            "{host}"
        );
    }
    // No Host at all (HTTP/1.0 style) is no name of ours either.
    let addr = d.url.trim_start_matches("http://").to_string();
    let answer = raw(&addr, "GET /healthz HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.0 421") || answer.starts_with("HTTP/1.1 421"),
        "{answer}"
    );
    // 421s keep the security headers and are counted.
    let r = c
        .get(format!("{}/api/status", d.url))
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let metrics = c
        .get(format!("{}/metrics", d.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("status=\"421\""), "{metrics}");
}

#[tokio::test]
async fn a_cross_site_post_with_the_cookie_gets_403() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _upstream) = daemon(dir.path(), &[]).await;
    let c = client();
    let (cookie, set_cookie) = sign_in(&c, &d).await;
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let post = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = format!("{}{path}", d.url);
        let cookie = cookie.clone();
        async move {
            let mut r = c.post(url).header("Cookie", cookie);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.send().await.unwrap().status()
        }
    };
    let evil = "https://evil.example".to_string();
    // What browsers send for a form or fetch from another site, or from
    // another port on this host (same-site, and SameSite=Strict lets the
    // cookie through), or from a sandboxed frame.
    let refused: Vec<Vec<(&str, String)>> = vec![
        vec![
            ("Sec-Fetch-Site", "cross-site".into()),
            ("Origin", evil.clone()),
        ],
        vec![
            ("Sec-Fetch-Site", "same-site".into()),
            ("Origin", "http://127.0.0.1:1".into()),
        ],
        vec![("Origin", evil.clone())],
        vec![("Origin", "null".into())],
        vec![("Origin", format!("http://127.0.0.1:{}", port_of(&d) + 1))],
    ];
    for headers in &refused {
        for path in [
            "/api/sync",
            "/api/sync?retry_parked=true",
            "/api/session/stop",
            "/logout",
        ] {
            assert_eq!(
                post(path, headers.clone()).await,
                StatusCode::FORBIDDEN,
                "{path} {headers:?}"
            );
        }
    }
    // Signing in from another site is refused too (login CSRF).
    let r = c
        .post(format!("{}/login", d.url))
        .header("Sec-Fetch-Site", "cross-site")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The refused logout did not end the login; the page's own requests
    // (same origin, by either header) and non-browser clients pass.
    for headers in [
        vec![
            ("Sec-Fetch-Site", "same-origin".to_string()),
            ("Origin", d.url.clone()),
        ],
        vec![("Origin", d.url.clone())],
        vec![("Sec-Fetch-Site", "none".to_string())],
        vec![],
    ] {
        assert_eq!(
            post("/api/sync", headers.clone()).await,
            StatusCode::ACCEPTED,
            "{headers:?}"
        );
    }
    // A bearer token cannot be attached by another site: it passes.
    let r = c
        .post(format!("{}/api/sync", d.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Reading is not state-changing (and CORS keeps the answer from the page).
    let r = c
        .get(format!("{}/api/status", d.url))
        .header("Cookie", &cookie)
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_login_flood_gets_429_with_retry_after_and_only_for_that_client() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _upstream) = daemon(dir.path(), &[]).await;
    let login = |c: reqwest::Client, token: &'static str| {
        let url = format!("{}/login", d.url);
        async move { c.post(url).form(&[("token", token)]).send().await.unwrap() }
    };
    let guesser = client_from("127.0.0.2");
    for n in 0..5 {
        let r = login(guesser.clone(), "guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {n}");
    }
    for token in ["guess", TOKEN] {
        let r = login(guesser.clone(), token).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{token}");
        assert!(r.headers().get(SET_COOKIE).is_none());
        let wait: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
    }
    // The header is no way around it.
    let r = guesser
        .get(format!("{}/api/status", d.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    // Another client is not held up.
    let r = login(client_from("127.0.0.3"), TOKEN).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // Guessing by header counts the same way.
    let header_guesser = client_from("127.0.0.4");
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = header_guesser
            .get(format!("{}/api/status", d.url))
            .header("Authorization", "Bearer guess")
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 401, 401, 429]);
}

#[tokio::test]
async fn with_an_https_public_url_the_cookie_is_secure_and_its_host_and_origin_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _upstream) = daemon(
        dir.path(),
        &[(
            "KIOSK_GATEWAY_STATUS_PUBLIC_URL",
            "https://kiosk-7.ops.example/",
        )],
    )
    .await;
    let c = client();
    let r = c
        .post(format!("{}/login", d.url))
        .header("Host", "kiosk-7.ops.example")
        .header("Origin", "https://kiosk-7.ops.example")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let r = c
        .post(format!("{}/api/sync", d.url))
        .header("Host", "kiosk-7.ops.example")
        .header("Origin", "https://kiosk-7.ops.example")
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .post(format!("{}/logout", d.url))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    let cleared = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("; Secure"),
        "{cleared}"
    );
}

#[tokio::test]
async fn a_token_is_the_same_whether_read_from_a_file_the_environment_or_typed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("status.token"), format!("  {TOKEN}\t\r\n")).unwrap();
    let config = write_config(dir.path(), "");
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_STATUS_TOKEN_FILE", "status.token")],
    );
    let c = client();
    for offered in [TOKEN.to_string(), format!(" {TOKEN} ")] {
        let r = c
            .post(format!("{}/login", d.url))
            .form(&[("token", offered.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{offered:?}");
    }
    let r = c
        .get(format!("{}/api/status", d.url))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn secrets_are_trimmed_alike_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(dir.path().join("daily.key"), " from-file \n").unwrap();
    std::fs::write(creds.join("status_token"), "\tfrom-credential\r\n").unwrap();
    let src = format!(
        "[agent]\noffer_url = \"http://127.0.0.1:7860/api/offer\"\n\
         [daily]\napi_key_file = \"{}\"\n\
         [sync]\nurl = \"https://up.example/v1/batches\"\n",
        dir.path().join("daily.key").display()
    );
    let env = Env::new([("KIOSK_GATEWAY_SYNC_TOKEN", "  from-env \n")], Some(creds));
    let c = Config::parse(&dir.path().join("config.toml"), &src, &env).unwrap();
    let secret =
        |s: &Option<secrecy::SecretString>| s.as_ref().unwrap().expose_secret().to_string();
    assert_eq!(secret(&c.daily.api_key), "from-file");
    assert_eq!(secret(&c.sync.token), "from-env");
    assert_eq!(secret(&c.status.token), "from-credential");
    // Only whitespace is no secret.
    let env = Env::new([("KIOSK_GATEWAY_SYNC_TOKEN", " \t ")], None);
    let e = Config::parse(&dir.path().join("config.toml"), &src, &env).unwrap_err();
    assert!(
        e.problems()
            .iter()
            .any(|p| p.contains("sync.token") && p.contains("empty")),
        "{:?}",
        e.problems()
    );
}

#[test]
fn allowed_hosts_and_public_url_are_checked_when_loading() {
    let path = Path::new("/etc/kiosk-gateway/config.toml");
    let base = "[agent]\noffer_url = \"http://127.0.0.1:7860/api/offer\"\n";
    let good = format!(
        "{base}[status]\nallowed_hosts = [\"Status.Lobby.example\", \"192.0.2.7:8080\", \"[2001:db8::7]\"]\n\
         public_url = \"https://kiosk-7.ops.example/\"\n"
    );
    let c = Config::parse(path, &good, &Env::default()).unwrap();
    let hosts: Vec<(String, Option<u16>)> = c
        .status
        .allowed_hosts
        .iter()
        .map(|h| (h.host.clone(), h.port))
        .collect();
    assert_eq!(
        hosts,
        [
            ("status.lobby.example".to_string(), None),
            ("192.0.2.7".to_string(), Some(8080)),
            ("[2001:db8::7]".to_string(), None),
        ]
    );
    assert_eq!(
        c.status.public_url.unwrap().as_str(),
        "https://kiosk-7.ops.example/"
    );
    for bad in [
        "\"https://status.example/\"",
        "\"status.example/path\"",
        "\"user@status.example\"",
        "\"2001:db8::7\"",
        "\"status.example:99999\"",
        "\"\"",
    ] {
        let src = format!("{base}[status]\nallowed_hosts = [{bad}]\n");
        let e = Config::parse(path, &src, &Env::default()).unwrap_err();
        let p = e.problems();
        assert!(
            p.len() == 1 && p[0].contains("status.allowed_hosts: expected a host name"),
            "{bad}: {p:?}"
        );
    }
}
