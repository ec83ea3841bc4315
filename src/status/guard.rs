//! What a browser can be made to do against the status server, refused.
//!
//! - DNS rebinding: a page on `evil.example` whose name is re-pointed at
//!   the kiosk becomes same-origin with the status server, and the browser
//!   sends `Host: evil.example`. Only the server's own names are answered
//!   (the address the request came in on, `localhost`, 127.0.0.1 and [::1]
//!   with the server's port, the kiosk's hostname, `status.allowed_hosts`
//!   and the host of `status.public_url`); anything else gets 421.
//! - Cross-site requests: a state-changing request (not GET, HEAD or
//!   OPTIONS) that does not carry a bearer token (so rides on the login
//!   cookie, or signs in) must come from the status page's own origin,
//!   by `Sec-Fetch-Site` or, from browsers that do not send it, `Origin`.
//!   `SameSite=Strict` alone lets another site on the same host (another
//!   port, a sibling subdomain) through; this does not. Requests with
//!   neither header are not from a browser and pass.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::StatusState;
use crate::config::{AllowedHost, StatusConfig};

/// The TCP connection a request came on; the server adds it to every request.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// Where technicians reach the status server (`[status]` settings).
#[derive(Debug, Clone, Default)]
pub struct HostSettings {
    /// `status.listen`.
    pub listen: Option<SocketAddr>,
    pub allowed_hosts: Vec<AllowedHost>,
    pub public_url: Option<url::Url>,
}

impl HostSettings {
    pub fn from_config(c: &StatusConfig) -> Self {
        Self {
            listen: Some(c.listen),
            allowed_hosts: c.allowed_hosts.clone(),
            public_url: c.public_url.clone(),
        }
    }
}

/// The allowlists, fixed at start-up.
#[derive(Debug)]
pub struct Guard {
    /// Names allowed with the server's own port.
    own_names: Vec<String>,
    /// `status.allowed_hosts` and the public URL's host.
    extra: Vec<AllowedHost>,
    /// The public URL's origin (`https://kiosk-7.example`), if configured.
    public_origin: Option<String>,
    listen_port: Option<u16>,
    secure_cookies: bool,
}

impl Guard {
    pub fn new(settings: &HostSettings) -> Self {
        Self::with_hostname(settings, kiosk_hostname().as_deref())
    }

    fn with_hostname(settings: &HostSettings, hostname: Option<&str>) -> Self {
        let mut own_names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(String::from)
            .collect();
        if let Some(name) = hostname.and_then(|h| AllowedHost::parse(h).ok()) {
            // Also as mDNS (avahi) announces it on the local network.
            if !name.host.contains('.') {
                own_names.push(format!("{}.local", name.host));
            }
            own_names.push(name.host);
        }
        if let Some(listen) = settings.listen.filter(|l| !l.ip().is_unspecified()) {
            own_names.push(ip_host(listen.ip()));
        }
        let mut extra = settings.allowed_hosts.clone();
        let public = settings.public_url.as_ref();
        if let Some(host) = public.and_then(|u| u.host_str()) {
            // Through a proxy the port seen in `Host` varies; the name is ours.
            extra.push(AllowedHost {
                host: host.to_ascii_lowercase(),
                port: None,
            });
        }
        Self {
            own_names,
            extra,
            public_origin: public.map(|u| u.origin().ascii_serialization()),
            listen_port: settings.listen.map(|l| l.port()).filter(|p| *p != 0),
            secure_cookies: public.is_some_and(|u| u.scheme() == "https"),
        }
    }

    /// Whether the login cookie is marked `Secure` (the public URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
    }

    /// Whether `host` (a `Host` header) names this server.
    fn host_allowed(&self, host: &str, conn: Option<&Connection>) -> bool {
        let Ok(asked) = AllowedHost::parse(host) else {
            return false;
        };
        let port = asked.port.unwrap_or(80);
        let own_port = conn.map(|c| c.local.port()).or(self.listen_port);
        if let Some(c) = conn
            && asked.host == ip_host(c.local.ip())
            && port == c.local.port()
        {
            return true;
        }
        if own_port == Some(port) && self.own_names.contains(&asked.host) {
            return true;
        }
        self.extra
            .iter()
            .any(|a| a.host == asked.host && a.port.is_none_or(|p| p == port))
    }

    /// Whether `origin` (an `Origin` header) is the status page's own.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        host.is_some_and(|h| origin == format!("http://{}", h.to_ascii_lowercase()))
            || self.public_origin.as_deref() == Some(origin.as_str())
    }
}

/// An IP address as it appears in a `Host` header.
fn ip_host(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn kiosk_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn request_host(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// 421 for a `Host` that is not this server's (DNS rebinding).
pub async fn check_host(State(state): State<StatusState>, req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<Connection>();
    let allowed = request_host(&req).is_some_and(|h| state.guard.host_allowed(h, conn));
    if allowed {
        return next.run(req).await;
    }
    tracing::debug!(
        host = request_host(&req).unwrap_or_default(),
        "status: request for a foreign Host refused"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this server does not answer to that Host; add it to status.allowed_hosts\n",
    )
        .into_response()
}

/// Whether a request proves itself with a bearer token rather than the
/// cookie (a header a cross-site page cannot make a browser send).
fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..7))
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer "))
}

/// 403 for a state-changing browser request from another origin.
pub async fn check_origin(State(state): State<StatusState>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || has_bearer(req.headers()) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let same_origin = match (header("sec-fetch-site"), header("origin")) {
        // The browser's own verdict; "none" is a technician's own action
        // (typed URL, bookmark).
        (Some(site), _) => matches!(site, "same-origin" | "none"),
        (None, Some(origin)) => state.guard.origin_allowed(origin, request_host(&req)),
        (None, None) => true,
    };
    if same_origin {
        return next.run(req).await;
    }
    tracing::debug!(
        path = req.uri().path(),
        "status: cross-site request refused"
    );
    (StatusCode::FORBIDDEN, "cross-site request refused\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(local: &str) -> Connection {
        Connection {
            remote: "192.0.2.99:50000".parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    fn guard(listen: &str, allowed: &[&str], public: Option<&str>) -> Guard {
        Guard::with_hostname(
            &HostSettings {
                listen: Some(listen.parse().unwrap()),
                allowed_hosts: allowed
                    .iter()
                    .map(|a| AllowedHost::parse(a).unwrap())
                    .collect(),
                public_url: public.map(|p| p.parse().unwrap()),
            },
            Some("Kiosk-7"),
        )
    }

    #[test]
    fn own_names_with_own_port_and_configured_ones_pass() {
        let g = guard(
            "127.0.0.1:8080",
            &["status.lobby.example", "10.0.0.9:80"],
            None,
        );
        let c = conn("127.0.0.1:8080");
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "kiosk-7:8080",
            "kiosk-7.local:8080",
            "status.lobby.example",
            "status.lobby.example:8443",
            "10.0.0.9",
            "10.0.0.9:80",
        ] {
            assert!(g.host_allowed(ok, Some(&c)), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "localhost:8081",
            "localhost",
            "kiosk-7.evil.example:8080",
            "10.0.0.9:8080",
            "127.0.0.1:8080/",
            "user@127.0.0.1:8080",
            "",
        ] {
            assert!(!g.host_allowed(refused, Some(&c)), "{refused}");
        }
    }

    #[test]
    fn on_all_interfaces_the_address_a_client_used_passes() {
        let g = guard("0.0.0.0:8080", &[], None);
        let lan = conn("192.168.1.50:8080");
        assert!(g.host_allowed("192.168.1.50:8080", Some(&lan)));
        assert!(!g.host_allowed("192.168.1.51:8080", Some(&lan)));
        assert!(!g.host_allowed("0.0.0.0:8080", Some(&lan)));
        let v6 = conn("[fe80::1]:8080");
        assert!(g.host_allowed("[FE80::1]:8080", Some(&v6)));
        // An IPv4 client of a dual-stack socket.
        let mapped = conn("[::ffff:192.168.1.50]:8080");
        assert!(g.host_allowed("192.168.1.50:8080", Some(&mapped)));
    }

    #[test]
    fn the_public_url_is_a_host_an_origin_and_makes_cookies_secure() {
        let g = guard("127.0.0.1:8080", &[], Some("https://Kiosk-7.Ops.example/"));
        assert!(g.secure_cookies());
        assert!(g.host_allowed("kiosk-7.ops.example", None));
        assert!(g.origin_allowed("https://kiosk-7.ops.example", Some("127.0.0.1:8080")));
        assert!(g.origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(!g.origin_allowed("http://127.0.0.1:8081", Some("127.0.0.1:8080")));
        assert!(!g.origin_allowed("null", Some("127.0.0.1:8080")));
        assert!(!guard("127.0.0.1:8080", &[], Some("http://k.example/")).secure_cookies());
        assert!(!guard("127.0.0.1:8080", &[], None).secure_cookies());
    }
}
