//! Client certificates from a real OpenBao's PKI engine: the tool's upstream connections present
//! one (mTLS) to an upstream that requires it, a rotation brings a new serial to new connections,
//! a tool without one presents none (and is refused), and a tool whose certificate Vault will not
//! issue answers 503 rather than going out without it.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use common::bao::*;
use common::*;
use http_body_util::Full;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::json;

/// Each request's path and the serial of its connection's client certificate.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A TLS upstream that asks for a client certificate, closes every connection after one answer,
/// and records each request's path with the serial of the certificate its connection presented.
struct MtlsUpstream {
    port: u16,
    seen: Seen,
}

impl MtlsUpstream {
    async fn start(config: rustls::ServerConfig) -> MtlsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let serial = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| {
                        let (_, cert) = x509_parser::parse_x509_certificate(c.as_ref()).unwrap();
                        cert.tbs_certificate.raw_serial_as_string()
                    });
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        record.lock().unwrap().push((req.uri().path().to_string(), serial.clone()));
                        let resp = http::Response::builder()
                            .header("connection", "close")
                            .body(Full::new(bytes::Bytes::from_static(b"ok")))
                            .unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        MtlsUpstream { port, seen }
    }

    fn last(&self) -> (String, Option<String>) {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw a request")
    }
}

/// PKI with an EC root and a role `agent` for client certificates; returns the root, PEM.
async fn configure_pki(bao: &Bao) -> String {
    bao.mount("pki", "pki").await;
    bao.api("POST", "sys/mounts/pki/tune", json!({"max_lease_ttl": "24h"})).await;
    let root = bao
        .api(
            "POST",
            "pki/root/generate/internal",
            json!({"common_name": "agents pki", "ttl": "24h", "key_type": "ec", "key_bits": 256}),
        )
        .await;
    bao.api(
        "POST",
        "pki/roles/agent",
        json!({"allow_any_name": true, "key_type": "ec", "key_bits": 256, "max_ttl": "1h",
               "client_flag": true, "server_flag": false}),
    )
    .await;
    root["data"]["certificate"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_tool_presents_a_vault_client_certificate_and_rotation_brings_a_new_serial() {
    let dir = tempfile::tempdir().unwrap();
    let bao = Bao::start(dir.path()).await;
    let key = JwtKey::new();
    configure_jwt(&bao, &key, "5m").await;
    let pki_root = configure_pki(&bao).await;
    let ca = TestCa::new();
    let roots = vec![CertificateDer::from_pem_slice(pki_root.as_bytes()).unwrap()];
    let up = MtlsUpstream::start(ca.server_mtls("api.test", &roots)).await;
    let d = tempfile::tempdir().unwrap();
    write_file(&d, "ca.pem", &ca.pem());
    let jwt = write_file(&d, "sa-token", &key.sign(ISSUER, "system:serviceaccount:agents:pod-a", AUDIENCE));
    let login = jwt_login(jwt.to_str().unwrap());
    let port = up.port;
    let policy = format!(
        r#"version: 1
audit: {{ output: "{{dir}}/audit.log" }}
resolve: {{ api.test: 127.0.0.1 }}
tools:
  signed:
    upstream: https://api.test:{port}/signed
    ca_file: "{{dir}}/ca.pem"
    client_certificate:
      source: vault
      addr: {addr}
      login: {login}
      path: pki/issue/agent
      common_name: pod-a.agents.internal
      ttl: 10s
    routes: [{{ host: api.test, port: {port}, allow_private: true, paths: ["/signed/**"] }}]
  plain:
    upstream: https://api.test:{port}/plain
    ca_file: "{{dir}}/ca.pem"
    routes: [{{ host: api.test, port: {port}, allow_private: true, paths: ["/plain/**"] }}]
  refused:
    upstream: https://api.test:{port}/refused
    required: false
    ca_file: "{{dir}}/ca.pem"
    client_certificate: {{ source: vault, addr: {addr}, login: {login}, path: pki/issue/not-allowed, common_name: x.internal }}
    routes: [{{ host: api.test, port: {port}, allow_private: true, paths: ["/refused/**"] }}]
"#,
        addr = bao.addr()
    );
    let p = Proxy::start_in(d, &policy).await;
    assert_eq!(status(&get(p.addr, "/signed/x").await), 200);
    let (path, first) = up.last();
    assert_eq!(path, "/signed/x");
    let first = first.expect("the tool presented a client certificate");
    let v = control(&p).await;
    let certs = v["client_certificates"].as_array().unwrap();
    let cert = certs.iter().find(|c| c["tool"] == "signed").expect("listed");
    assert_eq!(cert["state"], "valid", "{v}");
    assert_eq!(cert["serial"].as_str().map(|s| s.replace(':', "")), Some(first.replace(':', "")), "{v}");
    // A tool without one presents none on its own connections: the upstream refuses the handshake.
    let resp = get(p.addr, "/plain/x").await;
    assert_error(&resp, 502, "upstream_tls_error");
    assert!(up.seen.lock().unwrap().iter().all(|(path, _)| path != "/plain/x"), "it never got through");
    // A tool whose certificate Vault refuses to issue does not go out without one.
    eventually(
        async || {
            let v = control(&p).await;
            let c = v["client_certificates"].as_array().unwrap().iter().find(|c| c["tool"] == "refused").cloned();
            c.is_some_and(|c| c["last_error"].as_str().is_some_and(|e| e.starts_with("vault_denied")))
        },
        "the refusal shown",
    )
    .await;
    assert_error(&get(p.addr, "/refused/x").await, 503, "credential_unavailable");

    // Rotated at about half of 10 s: a new connection shows a new serial.
    let mut serials = vec![first.clone()];
    eventually(
        async || {
            assert_eq!(status(&get(p.addr, "/signed/x").await), 200);
            let (_, s) = up.last();
            let s = s.expect("every connection of the tool presents one");
            let new = s != first;
            if new {
                serials.push(s);
            }
            new
        },
        "a new certificate within 10 s",
    )
    .await;
    assert_eq!(serials.len(), 2, "a new certificate within 10 s: {serials:?} {:?}", audit_events(&p).await);
    let events = audit_events(&p).await;
    let refreshed = events.iter().find(|e| e["event"] == "client_certificate.refreshed").expect("audited");
    assert_eq!(refreshed["tool"], "signed");
    let metrics = get(p.admin, "/metrics").await;
    assert!(
        metric(&metrics, r#"credproxy_client_certificate_issues_total{result="ok",tool="signed"}"#) >= Some(2.0),
        "{metrics}"
    );
}
