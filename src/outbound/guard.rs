//! The guarded connector: name overrides, resolution, the private-address and own-listener
//! checks on the address actually connected to, and one deadline over the whole connect.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{BoxError, ConnectError};
use crate::policy::{normalize_host, Resolve};

/// What every connector reads at connect time; swapped on reload.
#[derive(Debug)]
pub struct ConnectSettings {
    /// Name overrides.
    pub resolve: Resolve,
    /// credproxy's own listener addresses.
    pub own: Vec<SocketAddr>,
    /// This host's interface addresses, read when a listener is bound to a wildcard address: a
    /// connection to any of them on that port reaches credproxy itself.
    pub local: Vec<IpAddr>,
    /// Resolve + connect + TLS deadline.
    pub connect_timeout: Duration,
}

impl Default for ConnectSettings {
    /// Before a policy is installed (and for the control-API and demo clients): no overrides,
    /// and the policy's default connect timeout rather than zero.
    fn default() -> Self {
        ConnectSettings {
            resolve: Resolve::default(),
            own: Vec::new(),
            local: Vec::new(),
            connect_timeout: crate::policy::Limits::default().connect_timeout,
        }
    }
}

/// Is this an address agents' traffic may not reach without `allow_private`? Besides loopback,
/// private, link-local and the like, IPv6 forms that carry an IPv4 address are judged by it
/// (IPv4-mapped, 6to4, NAT64's well-known prefix), and forms whose target cannot be judged
/// here (IPv4-compatible, Teredo, local-use NAT64, site-local) are refused.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared address space
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, IETF protocol assignments
                || o[0] >= 240 // 240.0.0.0/4, reserved
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded =
                |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            match s {
                // 64:ff9b::/96, NAT64 well-known prefix: the IPv4 address in the last 32 bits.
                [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => is_private(embedded(hi, lo)),
                // 64:ff9b:1::/48, local-use NAT64: embedding not known here.
                [0x64, 0xff9b, 1, ..] => true,
                // ::a.b.c.d, IPv4-compatible (deprecated), and ::, ::1.
                [0, 0, 0, 0, 0, 0, _, _] => true,
                // 2002::/16, 6to4: the IPv4 address in bits 16..48.
                [0x2002, hi, lo, ..] => is_private(embedded(hi, lo)),
                // 2001::/32, Teredo: a tunnel to an address that cannot be judged here.
                [0x2001, 0, ..] => true,
                _ => {
                    v6.is_loopback()
                        || v6.is_unspecified()
                        || v6.is_unique_local()
                        || v6.is_unicast_link_local()
                        || v6.is_multicast()
                        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
                }
            }
        }
    }
}

fn is_own(own: &[SocketAddr], local: &[IpAddr], addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let wildcard_reaches = |ip: IpAddr| is_private(ip) || local.iter().any(|l| l.to_canonical() == ip);
    own.iter().any(|o| {
        o.port() == addr.port() && (o.ip().to_canonical() == ip || (o.ip().is_unspecified() && wildcard_reaches(ip)))
    })
}

/// This host's interface addresses (for listeners bound to a wildcard address); none when they
/// cannot be read.
pub fn interface_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses: a listener on a wildcard address is recognised on private ones only");
            Vec::new()
        }
    }
}

/// Resolve `host:port` and connect to the first permitted address.
pub async fn connect_guarded(
    settings: &ConnectSettings,
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<TcpStream, ConnectError> {
    let host = normalize_host(host);
    let addrs: Vec<SocketAddr> = if let Some(ip) = settings.resolve.lookup(&host) {
        vec![SocketAddr::new(ip, port)]
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| ConnectError::Resolve(e.kind()))?.collect()
    };
    let mut refused = None;
    let mut last = ConnectError::Resolve(std::io::ErrorKind::NotFound);
    for addr in addrs {
        if is_own(&settings.own, &settings.local, addr) {
            refused = Some(ConnectError::Loop);
            continue;
        }
        if is_private(addr.ip()) && !allow_private {
            refused.get_or_insert(ConnectError::Private);
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = ConnectError::Connect(e.kind()),
        }
    }
    Err(refused.unwrap_or(last))
}

/// The innermost connector: [`connect_guarded`] for a URI.
#[derive(Clone)]
pub struct Guarded {
    pub(super) settings: Arc<ArcSwap<ConnectSettings>>,
    pub(super) allow_private: bool,
}

impl tower::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let settings = self.settings.load_full();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            connect_guarded(&settings, host, port, allow_private).await.map(TokioIo::new)
        })
    }
}

/// Bounds a whole connect (resolve, TCP and TLS) by the current `connect_timeout`.
#[derive(Clone)]
pub struct Deadline<S> {
    pub(super) inner: S,
    pub(super) settings: Arc<ArcSwap<ConnectSettings>>,
}

impl<S> tower::Service<Uri> for Deadline<S>
where
    S: tower::Service<Uri> + Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let limit = self.settings.load().connect_timeout;
        let fut = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectError::Timeout) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ranges_the_review_found_missing() {
        for ip in [
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe",                   // NAT64 of 169.254.169.254
            "64:ff9b:1::1.2.3.4",                   // local-use NAT64
            "::127.0.0.1",                          // IPv4-compatible
            "::8.8.8.8",                            // IPv4-compatible, deprecated whatever it embeds
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:a00:1::",                         // 6to4 of 10.0.0.1
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "fec0::1",                              // site-local
            "feff::1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.0.8",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_private("64:ff9b::808:808".parse().unwrap()));
        assert!(!is_private("2002:808:808::1".parse().unwrap()));
        assert!(!is_private("198.20.0.1".parse().unwrap()));
    }

    #[test]
    fn own_listener_check_unmaps_ipv4() {
        let own: Vec<SocketAddr> = vec!["127.0.0.1:15001".parse().unwrap()];
        assert!(is_own(&own, &[], "[::ffff:127.0.0.1]:15001".parse().unwrap()));
        assert!(is_own(&own, &[], "127.0.0.1:15001".parse().unwrap()));
        assert!(!is_own(&own, &[], "[::ffff:127.0.0.1]:15002".parse().unwrap()));
        let any: Vec<SocketAddr> = vec!["0.0.0.0:15001".parse().unwrap()];
        assert!(is_own(&any, &[], "[::ffff:10.0.0.1]:15001".parse().unwrap()));
        // A public address of this host on a wildcard listener's port is credproxy too.
        let public: IpAddr = "2001:db8::7".parse().unwrap();
        assert!(!is_own(&any, &[], SocketAddr::new(public, 15001)));
        assert!(is_own(&any, &[public], SocketAddr::new(public, 15001)));
        assert!(!is_own(&any, &[public], SocketAddr::new(public, 15002)));
        assert!(!is_own(&own, &[public], SocketAddr::new(public, 15001)), "a loopback listener is not reached there");
    }
}
