//! Upstream TLS: verified against the system roots plus a tool's `ca_file`; every verification
//! failure is a 502 `upstream_tls_error` and the token is never sent.

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "credproxy test CA");
    Ca { cert: p.self_signed(&key).unwrap(), key }
}

fn server(ca: &Ca, name: &str, expired: bool) -> rustls::ServerConfig {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

#[tokio::test]
async fn tls_is_verified_and_failures_never_see_the_token() {
    let ca = ca();
    let good = Upstream::start_tls(server(&ca, "good.test", false)).await;
    let expired = Upstream::start_tls(server(&ca, "expired.test", true)).await;
    let wrong = Upstream::start_tls(server(&ca, "other.test", false)).await;
    let unknown = Upstream::start_tls(server(&ca, "unknown.test", false)).await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "ca.pem", &ca.cert.pem());
    write_file(&dir, "token", "tls-token\n");
    let tool = |name: &str, port: u16, with_ca: bool| {
        format!(
            "  {name}:\n    upstream: https://{name}.test:{port}\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n{}    routes: [{{ host: {name}.test, port: {port}, allow_private: true }}]\n",
            if with_ca { "    ca_file: \"{dir}/ca.pem\"\n" } else { "" }
        )
    };
    let policy = format!(
        "version: 1\nresolve: {{ good.test: 127.0.0.1, expired.test: 127.0.0.1, wrong.test: 127.0.0.1, unknown.test: 127.0.0.1 }}\ntools:\n{}{}{}{}",
        tool("good", good.port(), true),
        tool("expired", expired.port(), true),
        tool("wrong", wrong.port(), true),
        tool("unknown", unknown.port(), false),
    );
    let proxy = Proxy::start_in(dir, &policy).await;

    let resp = get(proxy.addr, "/good/hello").await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(good.last().headers["authorization"], "Bearer tls-token");

    for (tool, up) in [("expired", &expired), ("wrong", &wrong), ("unknown", &unknown)] {
        let resp = get(proxy.addr, &format!("/{tool}/hello")).await;
        assert_eq!(status(&resp), 502, "{tool}: {resp}");
        assert!(resp.contains("credproxy-error: upstream_tls_error"), "{tool}: {resp}");
        assert!(up.requests().is_empty(), "{tool}: the upstream got a request");
    }
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, r#"credproxy_requests_total{outcome="upstream_error",tool="expired"}"#), Some(1.0), "{m}");
    proxy.shutdown().await;
}
