//! CONNECT interception: the pod CA's files, intercept / tunnel / deny, the CONNECT host's
//! certificate whatever the SNI, 421 on another authority, h2 and HTTP/1.1 inside, SSE and
//! WebSocket inside, a bounded leaf cache, and strict upstream TLS.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const HOST: &str = "api.example.test";

/// A tool `api` with a file credential at `https://api.example.test:PORT` (resolved to the
/// upstream on loopback, whose certificate the tool trusts through `ca_file`), an unrestricted
/// tool `open` at `open.example.test`, and interception writing into `{dir}/ca/`.
fn policy(port: u16, extra: &str) -> String {
    format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log", requests: all }}
interception: {{ ca_cert_out: "{{dir}}/ca/ca.crt", ca_bundle_out: "{{dir}}/ca/ca-bundle.crt", java_truststore_out: "{{dir}}/ca/truststore.p12" {extra} }}
resolve: {{ api.example.test: 127.0.0.1, open.example.test: 127.0.0.1, "*.wild.test": 127.0.0.1 }}
tools:
  api:
    credential: {{ source: file, path: "{{dir}}/token" }}
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: [{{ host: api.example.test, port: {port}, allow_private: true }}]
  open:
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: [{{ host: open.example.test, port: {port}, allow_private: true }}]
  wild:
    credential: {{ source: file, path: "{{dir}}/token" }}
    ca_file: "{{dir}}/upstream-ca.pem"
    routes: [{{ host: "*.wild.test", port: {port}, allow_private: true, paths: ["/v1/**"] }}]
"#
    )
}

struct Setup {
    up: Upstream,
    proxy: Proxy,
    upstream_ca: TestCa,
}

async fn setup(extra: &str) -> Setup {
    setup_with(extra, "").await
}

/// [`setup`] with more top-level policy (`limits:`, say).
async fn setup_with(extra: &str, top: &str) -> Setup {
    let upstream_ca = TestCa::new();
    // One certificate for every name the tests use: the upstream is the same loopback server.
    let up = Upstream::start_tls(upstream_ca.server_names(&[HOST, "open.example.test", "*.wild.test"])).await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "real-token\n");
    write_file(&dir, "upstream-ca.pem", &upstream_ca.pem());
    let proxy = Proxy::start_in(dir, &(policy(up.port(), extra) + top)).await;
    Setup { up, proxy, upstream_ca }
}

fn pod_ca(proxy: &Proxy) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read_to_string(proxy.dir.path().join("ca/ca.crt")).unwrap();
    pem_certs(&pem)
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config_at(roots, alpn, credproxy::clock::Clock::system())
}

/// Verifies certificates at `clock`'s time (a jumped manual clock in the renewal test).
#[derive(Debug)]
struct At(credproxy::clock::Clock);

impl rustls::time_provider::TimeProvider for At {
    fn current_time(&self) -> Option<rustls_pki_types::UnixTime> {
        Some(rustls_pki_types::UnixTime::since_unix_epoch(credproxy::clock::unix(self.0.now())))
    }
}

fn client_config_at(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    clock: credproxy::clock::Clock,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_details(provider, Arc::new(At(clock)))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

/// Send `CONNECT target`, returning the stream after a 200 or the whole refusal.
async fn connect(proxy: &Proxy, target: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let head = String::from_utf8(read_head(&mut s).await).unwrap();
    if status(&head) == 200 {
        Ok(s)
    } else {
        use tokio::io::AsyncReadExt;
        let mut rest = String::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_string(&mut rest)).await;
        Err(head + &rest)
    }
}

/// CONNECT, then TLS trusting `roots`, verifying the certificate for `verify_as` while sending
/// `sni` (none when `sni` is an IP address).
async fn tunnel_tls(
    proxy: &Proxy,
    target: &str,
    roots: &[CertificateDer<'static>],
    sni: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let s = connect(proxy, target).await.unwrap_or_else(|e| panic!("CONNECT refused: {e}"));
    let connector = tokio_rustls::TlsConnector::from(client_config(roots, alpn));
    connector.connect(ServerName::try_from(sni.to_string()).unwrap(), s).await
}

/// One HTTP/1.1 request on a TLS stream; the response head and body.
async fn h1(tls: TlsStream<TcpStream>, req: http::Request<Empty<Bytes>>) -> (http::response::Parts, String) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts, String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned())
}

fn get(path: &str, host: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", host)
        .header("authorization", "Bearer placeholder-from-agent")
        .header("x-api-key", "placeholder")
        .body(Empty::new())
        .unwrap()
}

fn pem_set(pem: &str) -> HashSet<Vec<u8>> {
    pem_certs(pem).into_iter().map(|c| c.to_vec()).collect()
}

#[tokio::test]
async fn interception_injects_and_the_upstream_sees_only_the_real_token() {
    let s = setup("").await;
    let port = s.up.port();
    let ca = pod_ca(&s.proxy);
    assert_eq!(ca.len(), 1);
    let tls = tunnel_tls(&s.proxy, &format!("{HOST}:{port}"), &ca, HOST, &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (parts, body) = h1(tls, get("/v1/models?x=1", &format!("{HOST}:{port}"))).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(body, "ok /v1/models");
    let seen = s.up.last();
    assert_eq!(seen.uri, "/v1/models?x=1");
    assert_eq!(seen.headers.get_all("authorization").iter().collect::<Vec<_>>(), ["Bearer real-token"]);
    assert!(seen.headers.get("x-api-key").is_none());
    // The bundle is the system's roots plus the CA (as sets), the CA file the CA alone.
    let dir = s.proxy.dir.path().join("ca");
    let bundle = pem_set(&std::fs::read_to_string(dir.join("ca-bundle.crt")).unwrap());
    let mut want: HashSet<Vec<u8>> = credproxy::certs::system_roots().certs.iter().map(|c| c.to_vec()).collect();
    assert!(want.len() > 10, "the system roots were found");
    want.insert(ca[0].to_vec());
    assert_eq!(bundle, want);
    for f in ["ca.crt", "ca-bundle.crt", "truststore.p12"] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777, 0o644, "{f}");
    }
    let metrics = s.proxy.metrics().await;
    assert_eq!(metric(&metrics, "credproxy_tls_interceptions_total{result=\"ok\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "credproxy_tls_leaf_certs_cached"), Some(1.0));
    assert_eq!(metric(&metrics, "credproxy_requests_total{outcome=\"injected\",tool=\"api\"}"), Some(1.0));
    let expiry = metric(&metrics, "credproxy_ca_expiration_timestamp_seconds").unwrap();
    let year =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() + 365.0 * 86400.0;
    assert!((expiry - year).abs() < 120.0, "{expiry} vs {year}");
    let audit = s.proxy.audit().await;
    let created: Vec<&str> = audit.lines().filter(|l| l.contains("\"ca.created\"")).collect();
    assert_eq!(created.len(), 1, "{audit}");
    assert!(created[0].contains("dns:api.example.test") && created[0].contains("dns:wild.test"), "{}", created[0]);
    assert!(!created[0].contains("open.example.test"), "an unrestricted host is tunnelled, not permitted");
    let connect = audit.lines().find(|l| l.contains("\"method\":\"CONNECT\"")).expect("the CONNECT is audited");
    assert!(connect.contains("request.forwarded") && connect.contains(HOST), "{connect}");
}

#[tokio::test]
async fn unrestricted_hosts_are_tunnelled_and_unknown_ones_refused_before_any_byte() {
    let s = setup("").await;
    let port = s.up.port();
    // Tunnelled byte for byte: the agent talks TLS with the upstream itself (its own CA).
    let roots = pem_certs(&s.upstream_ca.pem());
    let tls = tunnel_tls(&s.proxy, &format!("open.example.test:{port}"), &roots, "open.example.test", &[b"http/1.1"])
        .await
        .unwrap();
    let (parts, _) = h1(tls, get("/anything", "open.example.test")).await;
    assert_eq!(parts.status, 200);
    let seen = s.up.last();
    assert_eq!(seen.headers["authorization"], "Bearer placeholder-from-agent", "a tunnel is not touched");
    let before = s.up.connection_count();
    let refused = connect(&s.proxy, &format!("unknown.example.test:{port}")).await.unwrap_err();
    assert_error(&refused, 403, "route_denied");
    let refused = connect(&s.proxy, &format!("{HOST}:1")).await.unwrap_err();
    assert_error(&refused, 403, "route_denied");
    let bad = connect(&s.proxy, HOST).await.unwrap_err();
    assert_error(&bad, 400, "bad_request");
    assert_eq!(s.up.connection_count(), before, "the upstream saw nothing of refused CONNECTs");
}

#[tokio::test]
async fn the_connect_hosts_certificate_is_served_whatever_the_sni() {
    let s = setup("").await;
    let port = s.up.port();
    let ca = pod_ca(&s.proxy);
    for sni in ["evil.example.test", "127.0.0.1"] {
        let s2 = connect(&s.proxy, &format!("{HOST}:{port}")).await.unwrap();
        // Accept any certificate, then look at what was served.
        let mut cfg = (*client_config(&ca, &[b"http/1.1"])).clone();
        cfg.dangerous().set_certificate_verifier(Arc::new(AnyCert));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), s2)
            .await
            .unwrap();
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&ca), provider()).build().unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls_pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&served, &[], &ServerName::try_from(HOST).unwrap(), &[], now)
            .unwrap_or_else(|e| panic!("SNI {sni}: the certificate is not {HOST}'s: {e}"));
        assert!(verifier
            .verify_server_cert(&served, &[], &ServerName::try_from(sni.to_string()).unwrap(), &[], now)
            .is_err());
    }
    assert_eq!(metric(&s.proxy.metrics().await, "credproxy_tls_leaf_certs_cached"), Some(1.0));
}

#[tokio::test]
async fn another_authority_inside_the_tunnel_is_421_and_the_upstream_sees_nothing() {
    let s = setup("").await;
    let port = s.up.port();
    let ca = pod_ca(&s.proxy);
    for host in ["open.example.test".to_string(), format!("open.example.test:{port}"), format!("{HOST}:1"), HOST.into()]
    {
        let tls = tunnel_tls(&s.proxy, &format!("{HOST}:{port}"), &ca, HOST, &[b"http/1.1"]).await.unwrap();
        let (parts, body) = h1(tls, get("/v1/x", &host)).await;
        assert_eq!(parts.status, 421, "Host {host}: {body}");
        assert_eq!(parts.headers["credproxy-error"], "misdirected_request");
    }
    assert!(s.up.requests().is_empty());
    let audit = s.proxy.audit().await;
    assert_eq!(audit.matches("\"reason\":\"misdirected\"").count(), 4, "{audit}");
}

#[tokio::test]
async fn h2_inside_the_tunnel() {
    let s = setup("").await;
    let port = s.up.port();
    let ca = pod_ca(&s.proxy);
    let tls = tunnel_tls(&s.proxy, &format!("{HOST}:{port}"), &ca, HOST, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    for (authority, want) in [(format!("{HOST}:{port}"), 200), (format!("open.example.test:{port}"), 421)] {
        let req = http::Request::get(format!("https://{authority}/v1/h2"))
            .header("authorization", "Bearer placeholder")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), want, "{authority}");
    }
    let seen = s.up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v1/h2");
    assert_eq!(seen[0].headers["authorization"], "Bearer real-token");
}

#[tokio::test]
async fn sse_event_by_event_and_a_websocket_echo_inside_the_tunnel() {
    let s = setup("").await;
    let port = s.up.port();
    let ca = pod_ca(&s.proxy);
    let tls = tunnel_tls(&s.proxy, &format!("{HOST}:{port}"), &ca, HOST, &[b"http/1.1"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(get("/v1/sse", &format!("{HOST}:{port}"))).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: first\n\n", "the first event arrives before the stream ends");
    s.up.release.notify_one();
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(last, "data: last\n\n");

    let tls = tunnel_tls(&s.proxy, &format!("{HOST}:{port}"), &ca, HOST, &[b"http/1.1"]).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{HOST}:{port}/v1/ws"), tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping inside TLS")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "ping inside TLS");
    let upgrade = s.up.requests().into_iter().find(|r| r.uri == "/v1/ws").expect("the upgrade reached the upstream");
    assert_eq!(upgrade.headers["authorization"], "Bearer real-token");
}

#[tokio::test]
async fn five_thousand_subdomains_stay_within_the_leaf_cache_bound() {
    let s = setup(", leaf_cache_size: 64").await;
    let port = s.up.port();
    let proxy = Arc::new(s.proxy);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..5000).step_by(8) {
                // The leaf is minted when the CONNECT is decided, before the 200.
                let _ = connect(&proxy, &format!("h{i}.wild.test:{port}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = proxy.metrics().await;
    let cached = metric(&metrics, "credproxy_tls_leaf_certs_cached").unwrap();
    assert!((1.0..=64.0).contains(&cached), "{cached} leaves cached with a bound of 64");
    // A host minted long ago (evicted) and the latest both still work.
    let ca = pod_ca(&proxy);
    for host in ["h0.wild.test", "h4999.wild.test"] {
        let tls = tunnel_tls(&proxy, &format!("{host}:{port}"), &ca, host, &[b"http/1.1"]).await.unwrap();
        let (parts, _) = h1(tls, get("/v1/w", &format!("{host}:{port}"))).await;
        assert_eq!(parts.status, 200, "{host}");
    }
    assert_eq!(s.up.last().headers["authorization"], "Bearer real-token");
}

#[tokio::test]
async fn a_bad_upstream_certificate_is_502_and_the_token_is_never_sent() {
    let s = setup("").await;
    let ca = pod_ca(&s.proxy);
    // An upstream whose certificate the tool's ca_file does not vouch for.
    let stranger = Upstream::start_tls(TestCa::new().server(HOST, false)).await;
    let expired = Upstream::start_tls(s.upstream_ca.server(HOST, true)).await;
    let policy = policy(s.up.port(), "").replace(
        "routes: [{ host: api.example.test",
        &format!(
            "routes: [{{ host: api.example.test, port: {}, allow_private: true }}, {{ host: api.example.test, port: {}, allow_private: true }}, {{ host: api.example.test",
            stranger.port(),
            expired.port()
        ),
    );
    s.proxy.rewrite(&policy);
    eventually(async || s.proxy.audit().await.contains("config.reloaded"), "the reload").await;
    for up in [&stranger, &expired] {
        let target = format!("{HOST}:{}", up.port());
        let tls = tunnel_tls(&s.proxy, &target, &ca, HOST, &[b"http/1.1"]).await.unwrap();
        let (parts, body) = h1(tls, get("/v1/secret", &target)).await;
        assert_eq!(parts.status, 502, "{body}");
        assert_eq!(parts.headers["credproxy-error"], "upstream_tls_error");
        assert!(up.requests().is_empty(), "the upstream never got a request, so never the token");
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(certs: &[CertificateDer<'static>]) -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store.add(c.clone()).unwrap();
    }
    Arc::new(store)
}

/// Accepts any server certificate: to look at what the proxy serves for a foreign SNI.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The CA that verifies the leaf served for `host`, among `cas`.
async fn issuer_of(proxy: &Proxy, host: &str, port: u16, cas: &[CertificateDer<'static>]) -> usize {
    issuer_at(proxy, host, port, cas, credproxy::clock::Clock::system()).await
}

/// [`issuer_of`], verifying at `clock`'s time.
async fn issuer_at(
    proxy: &Proxy,
    host: &str,
    port: u16,
    cas: &[CertificateDer<'static>],
    clock: credproxy::clock::Clock,
) -> usize {
    let mut found = Vec::new();
    for (i, ca) in cas.iter().enumerate() {
        let s = connect(proxy, &format!("{host}:{port}")).await.unwrap();
        let connector =
            tokio_rustls::TlsConnector::from(client_config_at(std::slice::from_ref(ca), &[b"http/1.1"], clock.clone()));
        if connector.connect(ServerName::try_from(host.to_string()).unwrap(), s).await.is_ok() {
            found.push(i);
        }
    }
    assert_eq!(found.len(), 1, "{host}: exactly one CA verifies its leaf");
    found[0]
}

#[tokio::test]
async fn a_reload_with_new_hosts_adds_a_second_ca_and_the_first_keeps_its_hosts() {
    let s = setup("").await;
    let port = s.up.port();
    let first = pod_ca(&s.proxy);
    assert_eq!(issuer_of(&s.proxy, HOST, port, &first).await, 0);
    let bundle_before = pem_set(&std::fs::read_to_string(s.proxy.dir.path().join("ca/ca-bundle.crt")).unwrap());
    let policy = policy(port, "").replace(
        "resolve: {",
        "resolve: { new.example.test: 127.0.0.1,",
    ) + &format!(
        "  new:\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n    ca_file: \"{{dir}}/upstream-ca.pem\"\n    routes: [{{ host: new.example.test, port: {port}, allow_private: true }}]\n"
    );
    s.proxy.rewrite(&policy);
    eventually(async || s.proxy.audit().await.contains("config.reloaded"), "the reload").await;
    let both = pod_ca(&s.proxy);
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], first[0], "the first CA stays, first in the file");
    let bundle = pem_set(&std::fs::read_to_string(s.proxy.dir.path().join("ca/ca-bundle.crt")).unwrap());
    assert_eq!(bundle.difference(&bundle_before).cloned().collect::<Vec<_>>(), [both[1].to_vec()]);
    assert_eq!(issuer_of(&s.proxy, HOST, port, &both).await, 0, "the first CA keeps serving its hosts");
    assert_eq!(issuer_of(&s.proxy, "new.example.test", port, &both).await, 1);
    let audit = s.proxy.audit().await;
    let created: Vec<&str> = audit.lines().filter(|l| l.contains("\"ca.created\"")).collect();
    assert_eq!(created.len(), 2);
    assert!(
        created[1].contains("dns:new.example.test") && !created[1].contains("dns:api.example.test"),
        "{}",
        created[1]
    );
    // A reload that adds nothing outside the constraints adds no CA.
    s.proxy.rewrite(&(policy.clone() + "# a comment\n"));
    eventually(async || s.proxy.audit().await.matches("config.reloaded").count() == 2, "the second reload").await;
    assert_eq!(pod_ca(&s.proxy).len(), 2);
}

#[tokio::test]
async fn a_ca_in_its_last_third_gets_a_successor_and_leaves_move_to_it_at_its_last_day() {
    let upstream_ca = TestCa::new();
    let up = Upstream::start_tls(upstream_ca.server_names(&[HOST, "open.example.test", "*.wild.test"])).await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "token", "real-token\n");
    write_file(&dir, "upstream-ca.pem", &upstream_ca.pem());
    let clock = credproxy::clock::Clock::manual();
    let proxy = Proxy::start_with_clock(dir, &policy(port, ", ca_validity: 6d"), clock.clone()).await;
    let tls = proxy.running.as_ref().unwrap().shared.tls.get().unwrap().clone();
    assert_eq!(tls.renew().unwrap(), 0, "nothing is due at start");
    // Two thirds in: a successor is added; the old CA still has more than a day, so it serves.
    clock.jump(std::time::Duration::from_secs(4 * 86400 + 60));
    assert_eq!(tls.renew().unwrap(), 1);
    assert_eq!(tls.renew().unwrap(), 0, "one successor, not one per call");
    let cas = pod_ca(&proxy);
    assert_eq!(cas.len(), 2);
    assert_eq!(issuer_at(&proxy, HOST, port, &cas, clock.clone()).await, 0, "the old CA signs while it has over a day");
    // Under a day left: leaves minted from now on come from the successor.
    clock.jump(std::time::Duration::from_secs(3600 * 36));
    assert_eq!(issuer_at(&proxy, "b.wild.test", port, &cas, clock.clone()).await, 1);
    let audit = proxy.audit().await;
    assert_eq!(audit.matches("\"ca.created\"").count(), 2);
    // The metric is when interception stops without another renewal: the successor's end.
    let expiry = metric(&proxy.metrics().await, "credproxy_ca_expiration_timestamp_seconds").unwrap();
    let successor_end =
        credproxy::clock::unix(clock.now() - std::time::Duration::from_secs(36 * 3600)).as_secs_f64() + 6.0 * 86400.0;
    assert!((expiry - successor_end).abs() < 120.0, "{expiry} vs {successor_end}");
    proxy.shutdown().await;
}

/// In paused time, move the clock an hour at a time until `done` holds or `hours` reaches `limit`.
async fn advance_until(hours: &mut u32, limit: u32, done: impl Fn() -> bool) {
    while !done() && *hours < limit {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        *hours += 1;
    }
}

/// The renewal task on its own, in paused Tokio time (the manual clock follows it): a successor
/// two thirds in, the old CA out of the files once it expires, and the metric following.
#[tokio::test(start_paused = true)]
async fn the_renewal_task_adds_successors_and_drops_expired_cas_on_its_own() {
    use credproxy::policy::{HostPattern, Interception};
    let dir = tempfile::tempdir().unwrap();
    let settings = Interception {
        ca_cert_out: dir.path().join("ca.crt"),
        ca_bundle_out: dir.path().join("ca-bundle.crt"),
        java_truststore_out: None,
        ca_validity: std::time::Duration::from_secs(3 * 86400),
        leaf_cache_size: 10,
    };
    let clock = credproxy::clock::Clock::manual();
    let metrics = credproxy::metrics::Metrics::new();
    let audit = credproxy::audit::Audit::start(Some(dir.path().join("audit.log")), "test", metrics.clone());
    let hosts = [HostPattern::Exact("api.example.test".into())];
    let tls = credproxy::tls::Interceptor::start(&settings, &hosts, &metrics, &audit, &clock).unwrap();
    let task = tokio::spawn(credproxy::tls::renewals(Arc::downgrade(&tls)));
    let in_file = || pem_certs(&std::fs::read_to_string(dir.path().join("ca.crt")).unwrap());
    let first = in_file();
    let start = clock.now();
    let mut hours = 0;
    advance_until(&mut hours, 24 * 4, || tls.cas().len() == 2).await;
    let added_after = clock.now().duration_since(start).unwrap();
    assert_eq!(tls.cas().len(), 2, "a successor by day four");
    assert!(added_after >= std::time::Duration::from_secs(2 * 86400), "not before two thirds: {added_after:?}");
    assert_eq!(in_file().len(), 2);
    assert_eq!(in_file()[0], first[0], "the old CA stays while it lives");
    advance_until(&mut hours, 24 * 5, || tls.cas().len() == 1).await;
    assert!(clock.now().duration_since(start).unwrap() >= std::time::Duration::from_secs(3 * 86400));
    assert_eq!(tls.cas().len(), 1, "the expired CA is dropped");
    assert_eq!(in_file().len(), 1);
    assert_ne!(in_file()[0], first[0]);
    drop(tls);
    tokio::time::timeout(std::time::Duration::from_secs(2 * 86400), task).await.unwrap().unwrap();
}

/// An intercepted h2 connection that has carried one request (200), and its connection task.
async fn h2_after_one_request(
    s: &Setup,
) -> (hyper::client::conn::http2::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<hyper::Result<()>>) {
    let port = s.up.port();
    let ca = pod_ca(&s.proxy);
    let tls = tunnel_tls(&s.proxy, &format!("{HOST}:{port}"), &ca, HOST, &[b"h2"]).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}:{port}/v1/x")).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    (send, conn)
}

/// h2 has no idle timer of its own: an intercepted connection with no byte either way for
/// `idle_timeout` is closed, and gives back its `max_connections` place.
#[tokio::test]
async fn an_idle_intercepted_h2_connection_closes_after_idle_timeout() {
    let s = setup_with("", "limits: { idle_timeout: 1s }\n").await;
    let (_send, conn) = h2_after_one_request(&s).await;
    let active = async || metric(&s.proxy.metrics().await, "credproxy_connections_active");
    assert_eq!(active().await, Some(1.0), "the tunnel holds its place while in use");
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "not before idle_timeout");
    eventually(async || active().await == Some(0.0), "the place given back").await;
}

/// A shutdown drains intercepted connections: an idle kept-alive one closes at once rather than
/// holding the shutdown until its deadline.
#[tokio::test]
async fn shutdown_drains_an_idle_intercepted_connection_at_once() {
    let s = setup("").await;
    let (_send, conn) = h2_after_one_request(&s).await;
    let started = std::time::Instant::now();
    // The deadline is 2 s (tests/common): draining ends well before it.
    s.proxy.shutdown().await;
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "shutdown took {:?}", started.elapsed());
    tokio::time::timeout(std::time::Duration::from_secs(5), conn)
        .await
        .expect("the agent saw the connection end")
        .unwrap()
        .ok();
}

/// An HTTP/1.1 agent inside an intercepted tunnel; its connection's task, and the tunnel's end.
async fn h1_tunnel(s: &Setup, target: &str) -> (SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>) {
    let tls = tunnel_tls(&s.proxy, target, &pod_ca(&s.proxy), HOST, &[b"http/1.1"]).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    (
        send,
        tokio::spawn(async move {
            conn.await.ok();
        }),
    )
}

/// One request on a tunnel; the upstream's answer must be 200 naming the path.
async fn h1_on(send: &mut SendRequest<Empty<Bytes>>, path: &str, target: &str) {
    let resp = send.send_request(get(path, target)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
    assert_eq!((parts.status.as_u16(), body.as_str()), (200, format!("ok {path}").as_str()));
}

/// Two intercepted HTTP/1.1 tunnels open side by side each keep an upstream connection of their
/// own (a shared pool would hand A's idle connection to B), each request with the real token;
/// when both have ended, a third tunnel takes over a parked one rather than opening another.
#[tokio::test]
async fn intercepted_http1_tunnels_keep_their_own_upstream_connections_and_park_them() {
    let s = setup("").await;
    let target = format!("{HOST}:{}", s.up.port());
    let (mut a, a_end) = h1_tunnel(&s, &target).await;
    let (mut b, b_end) = h1_tunnel(&s, &target).await;
    for path in ["/v1/a/0", "/v1/b/0", "/v1/a/1", "/v1/b/1"] {
        let send = if path.starts_with("/v1/a") { &mut a } else { &mut b };
        h1_on(send, path, &target).await;
    }
    drop((a, b));
    a_end.await.unwrap();
    b_end.await.unwrap();
    // The tunnels have ended (and so parked their upstream connections) once the gauge is 0.
    eventually(async || s.proxy.connections_active().await == 0.0, "both tunnels to end").await;
    let (mut c, c_end) = h1_tunnel(&s, &target).await;
    h1_on(&mut c, "/v1/c/0", &target).await;
    drop(c);
    c_end.await.unwrap();
    let seen = s.up.requests();
    let on: Vec<(&str, usize)> = seen.iter().map(|r| (r.uri.as_str(), r.conn)).collect();
    assert_eq!(&on[..4], [("/v1/a/0", 0), ("/v1/b/0", 1), ("/v1/a/1", 0), ("/v1/b/1", 1)]);
    assert_eq!(on.len(), 5);
    assert_eq!(on[4].0, "/v1/c/0");
    assert!(on[4].1 < 2, "the third tunnel took a parked connection: {on:?}");
    assert!(seen
        .iter()
        .all(|r| r.headers.get_all("authorization").iter().collect::<Vec<_>>() == ["Bearer real-token"]));
    assert_eq!(s.up.connection_count(), 2);
}
