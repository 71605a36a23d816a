//! Upstream TLS: verified against the system roots plus a tool's `ca_file`; every verification
//! failure is a 502 `upstream_tls_error` and the token is never sent.

mod common;

use std::sync::Arc;

use common::*;

fn ca() -> TestCa {
    TestCa::new()
}

fn server(ca: &TestCa, name: &str, expired: bool) -> rustls::ServerConfig {
    ca.server(name, expired)
}

#[tokio::test]
async fn tls_is_verified_and_failures_never_see_the_token() {
    let ca = ca();
    let good = Upstream::start_tls(server(&ca, "good.test", false)).await;
    let expired = Upstream::start_tls(server(&ca, "expired.test", true)).await;
    let wrong = Upstream::start_tls(server(&ca, "other.test", false)).await;
    let unknown = Upstream::start_tls(server(&ca, "unknown.test", false)).await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "ca.pem", &ca.pem());
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

/// An HTTP/2-only TLS upstream: credproxy negotiates h2 by ALPN and answers the agent in HTTP/1.1.
#[tokio::test]
async fn h2_upstream_by_alpn() {
    use std::convert::Infallible;
    let ca = ca();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_alpn("h2.test", false, &[b"h2"])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(http::Version, Option<String>)>::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else { continue };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string());
                    seen.lock().unwrap().push((req.version(), auth));
                    async {
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                            "over h2",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "ca.pem", &ca.pem());
    write_file(&dir, "token", "h2-token");
    let policy = format!(
        "version: 1\nresolve: {{ h2.test: 127.0.0.1 }}\ntools:\n  h2:\n    upstream: https://h2.test:{port}\n    ca_file: \"{{dir}}/ca.pem\"\n    credential: {{ source: file, path: \"{{dir}}/token\" }}\n    routes: [{{ host: h2.test, port: {port}, allow_private: true }}]\n"
    );
    let proxy = Proxy::start_in(dir, &policy).await;
    let resp = get(proxy.addr, "/h2/x").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("over h2"), "{resp}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(http::Version::HTTP_2, Some("Bearer h2-token".to_string()))]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn token_endpoints_are_verified_too() {
    use common::authority::{Authority, Mode};
    let ca = ca();
    let auth = Authority::start_tls(Mode::Ok, server(&ca, "auth.test", false)).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir, "ca.pem", &ca.pem());
    write_file(&dir, "secret", "tls-secret");
    let tool = |name: &str, with_ca: bool| {
        format!(
            "  {name}:\n    required: false\n    upstream: http://127.0.0.1:{p}/{name}\n    credential: {{ source: oauth2_client_credentials, token_url: \"https://auth.test:{a}/token\", client_id: agent, client_secret_file: \"{{dir}}/secret\"{ca} }}\n    routes: [{{ scheme: http, host: 127.0.0.1, port: {p}, paths: [\"/{name}/**\"], allow_private: true }}]\n",
            p = up.port(),
            a = auth.addr.port(),
            ca = if with_ca { ", ca_file: \"{dir}/ca.pem\"" } else { "" },
        )
    };
    let policy = format!(
        "version: 1\nresolve: {{ auth.test: 127.0.0.1 }}\ntools:\n{}{}",
        tool("trusted", true),
        tool("untrusted", false)
    );
    let p = Proxy::start_unready(dir, &policy).await;
    eventually(async || p.credential("trusted").await["state"] == "valid", "a token over verified TLS").await;
    assert_eq!(status(&get(p.addr, "/trusted/x").await), 200);
    assert_eq!(up.last().headers["authorization"], "Bearer tok-1");
    eventually(async || p.credential("untrusted").await["consecutive_failures"].as_u64() >= Some(1), "a TLS failure")
        .await;
    let c = p.credential("untrusted").await;
    assert!(c["last_error"].as_str().unwrap().contains("TLS"), "{c}");
    assert_eq!(auth.requests().len(), 1, "the client secret never went to an unverified server");
}
