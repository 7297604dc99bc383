//! Who the client is, decided once per call: the TCP peer, or, when the
//! peer is a trusted proxy (`server.trusted_proxies`), the address that
//! proxy put in `X-Forwarded-For`.
//!
//! Proxies append the address they received the request from (Envoy with
//! `use_remote_address: true`), so the list reads left to right from the
//! client to the last proxy. Anything left of an untrusted hop may be
//! forged; the client is therefore the right-most address that is not
//! itself trusted. `X-Forwarded-For` from an untrusted peer is ignored.
//!
//! [`ClientAddressLayer`] puts a [`ClientAddress`] in every request's
//! extensions; the audit trail, login throttling and logs read it there.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use ipnet::IpNet;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The client of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    pub ip: IpAddr,
    /// The TCP peer's port; none when the address came from a proxy.
    pub port: Option<u16>,
}

impl ClientAddress {
    /// The address the layer attached to `request` (none without a TCP
    /// peer, e.g. in-process transports).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().copied()
    }
}

impl fmt::Display for ClientAddress {
    /// `ip:port` for a direct peer (as recorded before proxies were
    /// understood), the bare `ip` for a forwarded one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// The client of a call from TCP peer `peer` with `headers`.
pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ClientAddress {
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    let peer_ip = peer.ip().to_canonical();
    let direct = ClientAddress {
        ip: peer_ip,
        port: Some(peer.port()),
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return direct;
    }
    // Several header lines are one list, in order (RFC 9110 §5.3).
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = direct;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage: nothing further left can be believed either.
            break;
        };
        client = ClientAddress { ip, port: None };
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` element: an address, optionally with a port
/// (`1.2.3.4:5`, `[::1]:5`), as some proxies write them.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Inserts the [`ClientAddress`] into every request (see `app.rs`).
#[derive(Clone)]
pub struct ClientAddressLayer {
    trusted: Arc<[IpNet]>,
}

impl ClientAddressLayer {
    pub fn new(trusted: &[IpNet]) -> Self {
        Self {
            trusted: trusted.into(),
        }
    }
}

impl<S> Layer<S> for ClientAddressLayer {
    type Service = ClientAddressService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAddressService {
            inner,
            trusted: Arc::clone(&self.trusted),
        }
    }
}

/// The service [`ClientAddressLayer`] produces.
#[derive(Clone)]
pub struct ClientAddressService<S> {
    inner: S,
    trusted: Arc<[IpNet]>,
}

impl<S, B> Service<http::Request<B>> for ClientAddressService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let peer = extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.get_ref().remote_addr())
            });
        // Never one a client could have supplied: extensions are server-side.
        request.extensions_mut().remove::<ClientAddress>();
        if let Some(peer) = peer {
            let address = resolve(peer, request.headers(), &self.trusted);
            request.extensions_mut().insert(address);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("test CIDR")).collect()
    }

    /// One row: the TCP peer, the `X-Forwarded-For` lines, whether the
    /// proxies are configured, and the client address expected.
    struct Case {
        name: &'static str,
        peer: &'static str,
        forwarded_for: &'static [&'static str],
        proxies_configured: bool,
        want: &'static str,
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_peers() {
        let proxies = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let case = |name, peer, forwarded_for, proxies_configured, want| Case {
            name,
            peer,
            forwarded_for,
            proxies_configured,
            want,
        };
        let local = "127.0.0.1:4000";
        let cases = [
            case("no proxies configured", local, &["203.0.113.7"], false, local),
            case(
                "untrusted peer",
                "192.0.2.1:4000",
                &["203.0.113.7"],
                true,
                "192.0.2.1:4000",
            ),
            case("trusted peer, no header", local, &[], true, local),
            case("trusted peer", local, &["203.0.113.7"], true, "203.0.113.7"),
            case(
                "right-most untrusted wins over a forged left part",
                local,
                &["198.51.100.9, 203.0.113.7, 10.1.2.3"],
                true,
                "203.0.113.7",
            ),
            case(
                "header lines concatenate",
                local,
                &["198.51.100.9", "203.0.113.7"],
                true,
                "203.0.113.7",
            ),
            case(
                "all hops trusted: the left-most",
                local,
                &["10.0.0.5, 10.0.0.6"],
                true,
                "10.0.0.5",
            ),
            case(
                "garbage stops the walk",
                local,
                &["203.0.113.7, nonsense, 10.0.0.6"],
                true,
                "10.0.0.6",
            ),
            case(
                "ports and IPv6",
                local,
                &["[2001:db8::1]:443"],
                true,
                "2001:db8::1",
            ),
        ];
        for case in cases {
            let mut headers = HeaderMap::new();
            for line in case.forwarded_for {
                headers.append("x-forwarded-for", line.parse().expect("header value"));
            }
            let peer: SocketAddr = case.peer.parse().expect("peer");
            let trusted = if case.proxies_configured {
                &proxies[..]
            } else {
                &[]
            };
            assert_eq!(
                resolve(peer, &headers, trusted).to_string(),
                case.want,
                "case {}",
                case.name
            );
        }
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_networks() {
        let peer: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().expect("peer");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7".parse().expect("header"));
        let got = resolve(peer, &headers, &nets(&["127.0.0.1/32"]));
        assert_eq!(got.to_string(), "203.0.113.7");
    }
}
