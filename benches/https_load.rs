//! A load generator for `scripts/bench`'s HTTPS path: TLS to a server directly (nginx terminating
//! TLS) or through `CONNECT` to a proxy (credproxy intercepting), then HTTP/1.1 requests.
//! A measuring tool, not a test: it prints one JSON object per run.
//!
//!   https_load --target HOST:PORT --ca PEM [--proxy ADDR | --connect ADDR] [--path /p]
//!              --mode keepalive --conns 64 --secs 10     requests/s over kept-alive connections
//!              --mode rate --rate 2000 --conns 16 --secs 10   latency at a fixed rate (corrected
//!                                                         from each request's scheduled time)
//!              --mode newconn --conns 8 --secs 10        connections (TLS handshakes) per second
//!              --mode connect --count 1000               CONNECT to 1,000 distinct subdomains

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Opts {
    target: String,
    host: String,
    proxy: Option<SocketAddr>,
    connect: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    path: String,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

async fn open(o: &Opts, host: &str) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let target = o.target.replacen(&o.host, host, 1);
    let tcp = match (o.proxy, o.connect) {
        (Some(proxy), _) => {
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await? == 0 || head.len() > 4096 {
                    return Err("the proxy closed the CONNECT".into());
                }
                head.push(byte[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
            }
            s
        }
        (None, Some(addr)) => TcpStream::connect(addr).await?,
        (None, None) => TcpStream::connect(target.as_str()).await?,
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(o.tls.clone()).connect(name, tcp).await?)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn client(o: &Opts) -> Result<Sender, BoxError> {
    let tls = open(o, &o.host).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn request(o: &Opts, send: &mut Sender, close: bool) -> Result<(), BoxError> {
    send.ready().await?;
    let mut req = http::Request::get(&o.path).header("host", &o.target).header("authorization", "Bearer placeholder");
    if close {
        req = req.header("connection", "close");
    }
    let resp = send.send_request(req.body(Empty::new())?).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()).into());
    }
    resp.into_body().collect().await?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--mode") {
        return Ok(()); // `cargo bench` without arguments: nothing to measure here
    }
    let target = arg(&args, "--target").ok_or("--target HOST:PORT")?;
    let host = target.rsplit_once(':').map(|(h, _)| h.to_string()).ok_or("--target HOST:PORT")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(arg(&args, "--ca").ok_or("--ca PEM")?)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let o = Opts {
        target,
        host,
        proxy: arg(&args, "--proxy").map(|a| a.parse()).transpose()?,
        connect: arg(&args, "--connect").map(|a| a.parse()).transpose()?,
        tls: Arc::new(tls),
        path: arg(&args, "--path").unwrap_or_else(|| "/".into()),
    };
    let num = |name: &str, default: u64| arg(&args, name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let conns = num("--conns", 16) as usize;
    let secs = Duration::from_secs(num("--secs", 10));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut latencies_ms: Vec<f64> = Vec::new();
    match arg(&args, "--mode").as_deref() {
        Some("keepalive") | Some("newconn") => {
            let fresh = arg(&args, "--mode").as_deref() == Some("newconn");
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (o, done, errors) = (o.clone(), done.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut send = None;
                    while start.elapsed() < secs {
                        if send.is_none() {
                            send = client(&o).await.map_err(|e| eprintln!("connect: {e}")).ok();
                        }
                        let Some(s) = send.as_mut() else {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        match request(&o, s, fresh).await {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                        if fresh {
                            send = None;
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
        Some("rate") => {
            let rate = num("--rate", 2000);
            let total = rate * secs.as_secs();
            let (tx, rx) = async_channel(conns);
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (o, rx, errors) = (o.clone(), rx.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut send = client(&o).await.expect("connect");
                    let mut seen = Vec::new();
                    while let Ok(due) = rx.recv().await {
                        match request(&o, &mut send, false).await {
                            Ok(()) => seen.push(due.elapsed().as_secs_f64() * 1000.0),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    seen
                }));
            }
            let every = Duration::from_secs_f64(1.0 / rate as f64);
            for i in 0..total {
                let due = start + every * i as u32;
                tokio::time::sleep_until(due.into()).await;
                if tx.send(due).await.is_err() {
                    break;
                }
            }
            drop(tx);
            for t in tasks {
                latencies_ms.extend(t.await?);
            }
            done.store(latencies_ms.len() as u64, Ordering::Relaxed);
        }
        Some("connect") => {
            for i in 0..num("--count", 1000) {
                let host = format!("h{i}.{}", o.host);
                match open(&o, &host).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("{host}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
        _ => return Err("--mode keepalive|rate|newconn|connect".into()),
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"requests\":{n},\"errors\":{},\"per_second\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        errors.load(Ordering::Relaxed),
        n as f64 / elapsed,
        percentile(&latencies_ms, 0.50),
        percentile(&latencies_ms, 0.99)
    );
    Ok(())
}

/// A bounded multi-consumer queue of scheduled send times (tokio's mpsc has one consumer).
fn async_channel(cap: usize) -> (Tx, Rx) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap.max(1));
    (Tx(tx), Rx(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct Tx(tokio::sync::mpsc::Sender<Instant>);
impl Tx {
    async fn send(&self, v: Instant) -> Result<(), ()> {
        self.0.send(v).await.map_err(|_| ())
    }
}

#[derive(Clone)]
struct Rx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>);
impl Rx {
    async fn recv(&self) -> Result<Instant, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
