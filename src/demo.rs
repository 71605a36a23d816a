//! `credproxy demo`: the real proxy on `config/demo.yaml` against a local token authority
//! (10-second JWTs, so rotation shows within seconds) and a tool API that verifies every token,
//! with steady traffic and a live account of rotations, requests and rejections.

pub mod authority;
pub mod tool_api;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

/// The shipped demo policy (also `config/demo.yaml`, which `credproxy check` accepts as is).
pub const POLICY: &str = include_str!("../config/demo.yaml");
const SECRET: &str = include_str!("../config/demo-client-secret.txt");
const AUTHORITY: &str = "127.0.0.1:15280";
const TOOL_API: &str = "127.0.0.1:15281";
/// The demo's tools: name (and path prefix), audience, scope — as in `config/demo.yaml`.
const TOOLS: [(&str, &str, &str); 2] =
    [("search", "https://search.demo", "search:read"), ("tickets", "https://tickets.demo", "tickets:write")];
/// Each tool gets a request this often.
const EVERY: Duration = Duration::from_millis(100);

/// How the demo runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Stop after this long (else at Ctrl-C).
    pub duration: Option<Duration>,
    /// Negative control: the tool API verifies with a key the authority never used, so every
    /// request must be rejected — proof that the rejection count is real.
    pub wrong_key: bool,
    /// Every listener on a free port and the control socket in the demo's own folder (tests,
    /// which must never take the documented ports a user's demo may hold).
    pub free_ports: bool,
}

/// What the demo measured.
#[derive(Debug, Default)]
pub struct Summary {
    /// Requests sent through the proxy.
    pub requests: u64,
    /// Requests that did not come back 200.
    pub failed: u64,
    /// Requests the tool API refused.
    pub rejected: u64,
    /// Successful credential fetches (from credproxy's metrics), first fetches included.
    pub refreshes: u64,
    /// Of those, rotations: fetches that replaced a token.
    pub rotations: u64,
    /// Distinct tokens the tool API accepted.
    pub tokens_seen: usize,
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} for the demo {what}: {e}"))
}

/// Run the demo; prints as it goes.
pub async fn run(opts: Options) -> Result<Summary, String> {
    let (auth_at, api_at) = if opts.free_ports { ("127.0.0.1:0", "127.0.0.1:0") } else { (AUTHORITY, TOOL_API) };
    let auth_listener = bind(auth_at, "token authority").await?;
    let api_listener = bind(api_at, "tool API").await?;
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port().to_string()).unwrap_or_default();
    let (auth_port, api_port) = (port(&auth_listener), port(&api_listener));
    let keys = authority::keys();
    let issued = authority::serve(auth_listener, keys.signing, "demo-agent", SECRET.trim_end());
    let verify = if opts.wrong_key { authority::keys().public } else { keys.public };
    let expect = TOOLS.iter().map(|(n, a, s)| tool_api::Expect::new(n, a, s)).collect();
    let counts = tool_api::serve(api_listener, verify, authority::ISSUER, expect);

    let dir = tempfile_dir()?;
    let secret = dir.join("client-secret");
    let audit = dir.join("audit.log");
    std::fs::write(&secret, SECRET).map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
    let mut policy = POLICY
        .replace("config/demo-client-secret.txt", &secret.display().to_string())
        .replace("credproxy-demo-audit.log", &audit.display().to_string());
    if opts.free_ports {
        policy = policy
            .replace("15280", &auth_port)
            .replace("15281", &api_port)
            .replace("127.0.0.1:15201", "127.0.0.1:0")
            .replace("127.0.0.1:15290", "127.0.0.1:0")
            .replace("/tmp/credproxy-demo/control.sock", &dir.join("control.sock").display().to_string());
    }
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).map_err(|e| format!("cannot write {}: {e}", policy_path.display()))?;
    let running = crate::serve::start(policy_path).await.map_err(|e| e.to_string())?;
    let proxy = running.proxy_addr;
    println!("credproxy demo: the real proxy on config/demo.yaml, a token authority on 127.0.0.1:{auth_port} issuing");
    println!(
        "ES256 JWTs that live {}s, and a tool API on 127.0.0.1:{api_port} that verifies every token.",
        authority::TOKEN_TTL_SECS
    );
    println!("  agents   http://{proxy}/search/...  and  http://{proxy}/tickets/...");
    println!("  try      curl -i http://{proxy}/search/v1/items");
    println!("  metrics  http://{}/metrics", running.admin_addr);
    println!("  status   credproxy status --control {}", running.control);
    println!("  audit    {}", audit.display());
    if opts.wrong_key {
        println!("  NEGATIVE CONTROL: the tool API verifies with the wrong key; every request must be rejected");
    }
    println!();

    // Like a native sidecar's startupProbe on /ready: traffic starts once every token is fetched.
    for _ in 0..100 {
        if running.shared.not_ready().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(TOOLS.iter().map(|_| Default::default()).collect());
    let driver = tokio::spawn(drive(proxy, sent.clone()));
    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_report = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sleep_until(deadline) => break,
        }
        let t = started.elapsed().as_secs_f64();
        let live = running.shared.live.load();
        for rt in &live.tools {
            let Some(token) = rt.slot.as_ref().and_then(|s| s.current()) else { continue };
            let old = seen.insert(rt.name.to_string(), token.fingerprint.clone());
            if old.as_deref() == Some(token.fingerprint.as_str()) {
                continue;
            }
            let left = token.expires_at.and_then(|e| e.duration_since(std::time::SystemTime::now()).ok());
            let left = left.map_or(String::new(), |d| format!("expires in {:.1}s", d.as_secs_f64()));
            match old {
                None => println!("{t:6.1}s  {:<8} issued   {}  {left}", rt.name, token.fingerprint),
                Some(o) => println!(
                    "{t:6.1}s  {:<8} rotated  {}  {left}  (old {o} stays valid to its expiry)",
                    rt.name, token.fingerprint
                ),
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            let per: Vec<String> = TOOLS
                .iter()
                .zip(sent.iter())
                .map(|((name, ..), (ok, bad))| {
                    format!("{name} {} ok/{} failed", ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
                })
                .collect();
            let rejected: u64 = counts.iter().map(|c| c.rejected.load(Ordering::Relaxed)).sum();
            println!(
                "{t:6.1}s  requests: {}  ·  rejected by the tool API: {rejected}  ·  tokens issued: {}",
                per.join(", "),
                issued.load(Ordering::Relaxed)
            );
        }
    }
    driver.abort();
    let metrics = running.shared.metrics.encode();
    let per_tool: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("credproxy_credential_refreshes_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    let refreshes = per_tool.iter().sum();
    let rotations = per_tool.iter().map(|n| n.saturating_sub(1)).sum();
    let summary = Summary {
        requests: sent.iter().map(|(a, b)| a.load(Ordering::Relaxed) + b.load(Ordering::Relaxed)).sum(),
        failed: sent.iter().map(|(_, b)| b.load(Ordering::Relaxed)).sum(),
        rejected: counts.iter().map(|c| c.rejected.load(Ordering::Relaxed)).sum(),
        refreshes,
        rotations,
        tokens_seen: counts.iter().map(|c| c.tokens.lock().map_or(0, |t| t.len())).sum(),
    };
    running.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "demo summary: seconds={:.0} requests={} failed={} rejected={} refreshes={} rotations={} distinct_tokens_accepted={}",
        started.elapsed().as_secs_f64(),
        summary.requests,
        summary.failed,
        summary.rejected,
        summary.refreshes,
        summary.rotations,
        summary.tokens_seen
    );
    Ok(summary)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Steady traffic: each tool every [`EVERY`], counted as 200 or not.
async fn drive(proxy: std::net::SocketAddr, sent: Arc<Vec<(AtomicU64, AtomicU64)>>) {
    // The token-endpoint client type (loopback allowed): no extra hyper client in the binary.
    let client = crate::outbound::Upstreams::new().token_client(&[], false);
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        for (i, (name, ..)) in TOOLS.iter().enumerate() {
            let (client, sent) = (client.clone(), sent.clone());
            let uri: http::Uri = format!("http://{proxy}/{name}/v1/items").parse().expect("a valid URI");
            tokio::spawn(async move {
                let ok = match client.get(uri).await {
                    // Read the body so the connection goes back to the pool.
                    Ok(r) => r.status() == http::StatusCode::OK && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                let c = if ok { &sent[i].0 } else { &sent[i].1 };
                c.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
}

/// A boxed request handler, so every small server shares one hyper server instantiation.
pub type Handler = Arc<
    dyn Fn(
            http::Request<hyper::body::Incoming>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// Serve HTTP/1.1 on `listener` with `handler` until the task is aborted: the demo's authority
/// and tool API (and the tests' fault-injecting token endpoint) are small servers like this.
pub fn serve_http<F, Fut>(listener: TcpListener, handler: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<Bytes>>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    tokio::spawn(serve_boxed(listener, handler))
}

async fn serve_boxed(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let base = std::env::temp_dir().join(format!("credproxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    Ok(base)
}
