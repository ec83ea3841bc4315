//! The sockets of a SIP call: where the target is, which local address
//! reaches it, and an even/odd RTP/RTCP port pair. Shared by `dial` and a
//! session's leg.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use tokio::net::UdpSocket;

use super::dialog::DialError;

/// Why a target's sockets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The target is not a `sip:` URI we can dial.
    #[error(transparent)]
    Target(#[from] DialError),
    /// The target's host has no address.
    #[error("cannot resolve {host}: {problem}")]
    Resolve {
        /// The host as written.
        host: String,
        /// What the resolver said.
        problem: String,
    },
    /// A socket could not be opened.
    #[error("network")]
    Io(#[from] std::io::Error),
}

/// Where SIP goes for a target: its host and port (5060 by default).
pub(super) async fn resolve(target: &str) -> Result<SocketAddr, NetError> {
    let uri = ezk_sip_types::uri::SipUri::from_str(target)
        .map_err(|_| DialError::BadUri(target.to_owned()))?;
    if uri.sips {
        return Err(DialError::BadUri(target.to_owned()).into());
    }
    let port = uri.host_port.port.unwrap_or(5060);
    if let Some(ip) = uri.host_port.ip() {
        return Ok(SocketAddr::new(ip, port));
    }
    let host = uri.host_port.host.to_string();
    let resolve_err = |problem: String| NetError::Resolve {
        host: host.clone(),
        problem,
    };
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| resolve_err(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_err("no address".into()))
}

/// The local address the system would send to `peer` from.
pub(super) fn local_ip_for(peer: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(peer)?;
    Ok(probe.local_addr()?.ip())
}

/// An even RTP port and RTCP on the next one (RFC 3550 section 11).
pub(super) async fn media_sockets(ip: IpAddr) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let mut last = None;
    for _ in 0..50 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        match UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            Ok(rtcp) => return Ok((rtp, rtcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free even/odd UDP port pair")))
}

/// Sockets shared by every attempt of a call.
pub(super) struct Sockets {
    pub(super) sip: UdpSocket,
    pub(super) rtp: UdpSocket,
    pub(super) rtcp: UdpSocket,
    pub(super) peer: SocketAddr,
}

/// A datagram's first line, for the log: never headers, which may carry
/// digest credentials.
pub(super) fn start_line(datagram: &[u8]) -> String {
    let end = datagram
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(datagram.len())
        .min(120);
    String::from_utf8_lossy(&datagram[..end]).into_owned()
}

impl Sockets {
    /// Sockets for calling `target`: from `bind`, or from the address the
    /// system routes to the peer from.
    pub(super) async fn open(target: &str, bind: Option<IpAddr>) -> Result<Self, NetError> {
        let peer = resolve(target).await?;
        let ip = match bind {
            Some(ip) => ip,
            None => local_ip_for(peer)?,
        };
        let sip = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let (rtp, rtcp) = media_sockets(ip).await?;
        Ok(Self {
            sip,
            rtp,
            rtcp,
            peer,
        })
    }
}
