//! Who is on the other end of an admin request: the connection's peer, or, when that peer is
//! one of `--trusted-proxies`, the client it names in `X-Forwarded-For` (or `Forwarded`, as
//! `--client-ip-header` says). The sign-in rate limit counts failures by this address, and what
//! records who asked records it.
//!
//! The list is read from the right, the hop nearest toolgate first: each trusted proxy vouches
//! for the address to its left, so the client is the rightmost address that is not a trusted
//! proxy. Whatever a client writes into the header itself lies further left and is never
//! reached. A list that does not parse, or a hop that names no address (`unknown`, an
//! obfuscated name), ends the walk at the last trusted hop, which answers for it.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use forwarded_header_value::ForwardedHeaderValue;

use super::auth::AdminState;
use crate::config::{ClientIpHeader, TrustedProxies};

/// The client's address, as the admin listener takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AdminState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AdminState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let trusted = &app.config().trusted_proxies;
        Ok(ClientIp(client_ip(peer, &parts.headers, trusted)))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.trusts(peer) {
        return peer;
    }
    match hops(headers, trusted.header) {
        Some(hops) => rightmost_untrusted(peer, &hops, trusted),
        None => peer,
    }
}

/// The addresses the header lists, leftmost first (`None` for a hop that names none); None
/// when it is absent or does not parse. Several header lines are one list, in order.
fn hops(headers: &HeaderMap, header: ClientIpHeader) -> Option<Vec<Option<IpAddr>>> {
    let lines = headers
        .get_all(header.name())
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<&str>>>()?;
    if lines.is_empty() {
        return None;
    }
    let list = lines.join(",");
    let parsed = match header {
        ClientIpHeader::XForwardedFor => ForwardedHeaderValue::from_x_forwarded_for(&list),
        ClientIpHeader::Forwarded => ForwardedHeaderValue::from_forwarded(&list),
    }
    .ok()?;
    Some(parsed.iter().map(|s| s.forwarded_for_ip()).collect())
}

/// Walks `hops` from the right past trusted proxies: the first address that is not one is the
/// client; a hop without an address, or the list's end, leaves the last trusted one.
fn rightmost_untrusted(peer: IpAddr, hops: &[Option<IpAddr>], trusted: &TrustedProxies) -> IpAddr {
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = hop.map(|ip| ip.to_canonical()) else {
            return nearest;
        };
        if !trusted.trusts(ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn trusted(nets: &[&str], header: ClientIpHeader) -> TrustedProxies {
        let nets: Vec<String> = nets.iter().map(|s| s.to_string()).collect();
        TrustedProxies::parse(&nets, header).unwrap()
    }

    fn with(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_names_the_client() {
        let t = trusted(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let h = with("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("198.51.100.4"), &h, &t), ip("198.51.100.4"));
        // Nothing trusted: never.
        let none = TrustedProxies::default();
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &none), ip("10.1.1.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        // The client wrote 1.2.3.4 itself; the edge proxy appended its real address.
        let h = with("x-forwarded-for", &["1.2.3.4, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("203.0.113.9"));
        // Two header lines are one list.
        let h = with("x-forwarded-for", &["1.2.3.4", "203.0.113.9"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("203.0.113.9"));
        // All trusted: the leftmost.
        let h = with("x-forwarded-for", &["10.9.9.9, 10.0.0.2"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("10.9.9.9"));
        // Garbage: the peer answers for it.
        let h = with("x-forwarded-for", &["203.0.113.9, not-an-address"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
        // Absent: the peer.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &t),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_when_chosen_and_only_then() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"], ClientIpHeader::Forwarded);
        let mut h = with(
            "forwarded",
            &["for=1.2.3.4, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.3"],
        );
        h.append("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        assert_eq!(client_ip(ip("fd00::1"), &h, &t), ip("2001:db8::7"));
        // An obfuscated hop ends the walk at the trusted proxy that wrote it.
        let h = with("forwarded", &["for=1.2.3.4, for=_hidden, for=10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("10.0.0.3"));
        // X-Forwarded-For alone is not read in this mode.
        let h = with("x-forwarded-for", &["9.9.9.9"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
    }

    fn v4() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 4]>().prop_map(IpAddr::from)
    }

    proptest! {
        /// An untrusted peer is the client, whatever it sends.
        #[test]
        fn an_untrusted_peer_names_no_one(peer in v4(), text in "[ -~]{0,80}") {
            let t = trusted(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
            prop_assume!(!t.trusts(peer));
            if let Ok(v) = HeaderValue::from_str(&text) {
                let mut h = HeaderMap::new();
                h.insert("x-forwarded-for", v.clone());
                h.insert("forwarded", v);
                prop_assert_eq!(client_ip(peer, &h, &t), peer);
            }
        }

        /// Whatever the header holds, the answer is the peer or an address it lists, and
        /// never panics.
        #[test]
        fn the_answer_is_the_peer_or_a_listed_address(
            text in "[0-9a-f.:,\\[\\] =;_\"forFOR]{0,80}",
            forwarded in any::<bool>(),
        ) {
            let header = if forwarded { ClientIpHeader::Forwarded } else { ClientIpHeader::XForwardedFor };
            let t = trusted(&["10.0.0.0/8"], header);
            let peer = ip("10.0.0.1");
            if let Ok(v) = HeaderValue::from_str(&text) {
                let mut h = HeaderMap::new();
                h.insert(header.name(), v);
                let got = client_ip(peer, &h, &t);
                let listed = hops(&h, header).unwrap_or_default();
                prop_assert!(got == peer || listed.iter().flatten().any(|a| a.to_canonical() == got));
            }
        }

        /// A client behind a chain of trusted proxies is found, whatever it wrote to the left.
        #[test]
        fn a_client_behind_trusted_proxies_is_found(
            forged in proptest::collection::vec(v4(), 0..4),
            client in v4(),
            proxies in proptest::collection::vec(any::<[u8; 3]>(), 0..4),
        ) {
            let t = trusted(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
            prop_assume!(!t.trusts(client));
            let mut list: Vec<String> = forged.iter().map(|a| a.to_string()).collect();
            list.push(client.to_string());
            list.extend(proxies.iter().map(|p| format!("10.{}.{}.{}", p[0], p[1], p[2])));
            let h = with("x-forwarded-for", &[list.join(", ").as_str()]);
            prop_assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), client);
        }
    }
}
