//! Audit events: one JSON object per line, never a secret, written off the request path.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// A handle to emit audit events; cloning is cheap.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    instance: Arc<str>,
    metrics: Metrics,
}

enum Msg {
    Line(String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Buffered events before emitters start dropping (and counting) them.
const QUEUE: usize = 8192;

/// The RFC 3339 form used in every event (UTC, milliseconds).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Audit {
    /// Start the writer task; `output` is `None` for stdout.
    pub fn start(output: Option<PathBuf>, instance: &str, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        tokio::spawn(async move {
            let mut sink = open(output.as_ref());
            let mut next = rx.recv().await;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line(line) => {
                        let _ = sink.write_all(line.as_bytes());
                        // Drain the lines queued behind it, then flush once.
                        loop {
                            match rx.try_recv() {
                                Ok(Msg::Line(more)) => {
                                    let _ = sink.write_all(more.as_bytes());
                                }
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let _ = sink.flush();
                    }
                    Msg::Flush(done) => {
                        let _ = sink.flush();
                        let _ = done.send(());
                    }
                }
                if next.is_none() {
                    next = rx.recv().await;
                }
            }
        });
        Audit { tx, instance: instance.into(), metrics }
    }

    /// Wait until everything emitted so far is written.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Emit `event` with these fields (plus `ts`, `event`, `instance`).
    pub fn emit(&self, event: &str, fields: Map<String, Value>) {
        let mut obj = Map::with_capacity(fields.len() + 3);
        obj.insert("ts".into(), Value::String(timestamp(SystemTime::now())));
        obj.insert("event".into(), Value::String(event.into()));
        obj.insert("instance".into(), Value::String(self.instance.to_string()));
        obj.extend(fields);
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }
}

fn open(path: Option<&PathBuf>) -> Box<dyn Write + Send> {
    match path {
        None => Box::new(std::io::stdout()),
        Some(p) => match std::fs::OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot open audit output; writing audit events to stdout");
                Box::new(std::io::stdout())
            }
        },
    }
}

/// Build a field map: `fields!{"tool" => "x", "port" => 443}`.
#[macro_export]
macro_rules! fields {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}
