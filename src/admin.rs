//! The admin listener (`/metrics`, `/live`, `/ready`) and the control API (`GET /v1/credentials`,
//! `GET /v1/policy`, rotate, revoke), each with its own small connection cap. No endpoint ever
//! returns a token.

pub mod control;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::audit::timestamp;
use crate::body::{full, Body};
use crate::creds::Command;
use crate::policy::{Inject, Mode, Policy};
use crate::state::Shared;
use control::{ControlListener, Refusal};

/// Concurrent connections per admin or control listener; more are closed at once. Connections
/// are not kept alive and must send their head within [`HEAD_TIMEOUT`], so holding every slot
/// takes a steady stream of new connections rather than a few idle ones.
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request head on the admin and control listeners.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Which listener, with what the control listener checks.
pub enum Kind {
    /// Metrics and probes.
    Admin,
    /// Credential status, rotate, revoke and the policy in force.
    Control {
        /// The TCP port `Host` must name (`None` on a Unix socket).
        port: Option<u16>,
    },
}

/// A listener's accepted stream, boxed: one hyper server type for TCP and Unix sockets.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Serve the admin listener until shutdown.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    serve(Listener::Admin(listener), shared, Kind::Admin, shutdown).await;
}

/// Serve the control listener until shutdown (the socket file goes with it).
pub async fn serve_control(listener: ControlListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let port = match &listener {
        ControlListener::Tcp(_, port) => Some(*port),
        ControlListener::Unix(..) => None,
    };
    let kind = Kind::Control { port };
    serve(Listener::Control(listener), shared, kind, shutdown).await;
}

enum Listener {
    Admin(TcpListener),
    Control(ControlListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Admin(t) | Listener::Control(ControlListener::Tcp(t, _)) => Box::new(t.accept().await?.0),
            Listener::Control(ControlListener::Unix(u, _)) => Box::new(u.accept().await?.0),
        })
    }
}

async fn serve(listener: Listener, shared: Arc<Shared>, kind: Kind, mut shutdown: watch::Receiver<bool>) {
    let kind = Arc::new(kind);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            s = crate::accept::next(|| listener.accept()) => s,
            _ = shutdown.changed() => return,
        };
        // Over the cap: close at once (dropping the stream), so probes cannot starve memory.
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let (shared, kind) = (shared.clone(), kind.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (shared, kind) = (shared.clone(), kind.clone());
                async move { Ok::<_, Infallible>(route(&shared, &kind, req)) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).keep_alive(false);
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            drop(permit);
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    respond(status, "application/json", v.to_string())
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, json!({"error": {"code": code, "message": message}}))
}

fn route(shared: &Shared, kind: &Kind, req: Request<Incoming>) -> Response<Body> {
    if let Kind::Control { port } = kind {
        let live = shared.live.load();
        match control::admit(req.headers(), *port, live.policy.listen.control_auth.as_ref()) {
            Ok(()) => {}
            Err(Refusal::Host) => {
                return error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "misdirected_request",
                    "the control API answers only Host 127.0.0.1, [::1] or localhost with its port",
                )
            }
            Err(Refusal::Auth) => {
                let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required");
                r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        if req.method() == Method::POST {
            return command(shared, req.uri().path());
        }
    }
    if req.method() != Method::GET {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": {"code": "method_not_allowed"}}));
    }
    match (kind, req.uri().path()) {
        (Kind::Admin, "/metrics") => respond(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.encode()),
        (Kind::Admin, "/live") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (Kind::Admin, "/ready") => {
            let waiting = shared.not_ready();
            let mode = shared.live.load().policy.mode;
            match (waiting.is_empty(), mode) {
                (true, Mode::Enforce) => respond(StatusCode::OK, "text/plain", "ready\n"),
                (true, Mode::Report) => respond(StatusCode::OK, "text/plain", REPORT_READY),
                (false, _) => {
                    let names: Vec<&str> = waiting.iter().map(|n| &**n).collect();
                    let body = json!({"ready": false, "waiting_for": names, "mode": mode.as_str()});
                    json_response(StatusCode::SERVICE_UNAVAILABLE, body)
                }
            }
        }
        (Kind::Control { .. }, "/v1/credentials") => json_response(StatusCode::OK, credentials(shared)),
        (Kind::Control { .. }, "/v1/policy") => {
            json_response(StatusCode::OK, describe_policy(&shared.live.load().policy))
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": {"code": "not_found"}})),
    }
}

/// `POST /v1/credentials/{tool}/rotate` and `.../revoke`: queue the command for the tool's task,
/// at most once per [`crate::creds::COMMAND_EVERY`] per tool (each is an immediate call to the
/// authority: a loop must not get the client locked out there).
fn command(shared: &Shared, path: &str) -> Response<Body> {
    let Some((tool, action)) = path.strip_prefix("/v1/credentials/").and_then(|r| r.split_once('/')) else {
        return error(StatusCode::NOT_FOUND, "not_found", "POST /v1/credentials/{tool}/rotate or /revoke");
    };
    let cmd = match action {
        "rotate" => Command::Refresh { reason: "rotate" },
        "revoke" => Command::Revoke { reason: "api" },
        _ => return error(StatusCode::NOT_FOUND, "not_found", "the actions are rotate and revoke"),
    };
    let live = shared.live.load();
    let Some(slot) = live.tools.iter().find(|t| &*t.name == tool).and_then(|t| t.slot.as_ref()) else {
        return error(StatusCode::NOT_FOUND, "unknown_tool", "no tool of that name has a credential");
    };
    if slot.control().is_none() {
        return error(StatusCode::CONFLICT, "not_rotating", "file and env credentials change when their source does");
    }
    let taken = match slot.commands.try_take() {
        Ok(t) => t,
        Err(wait) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "rotate and revoke run at most once per 10 s per tool",
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return r;
        }
    };
    if !slot.command(cmd) {
        // Not accepted: the window stays open for the next try.
        slot.commands.give_back(taken);
        return error(StatusCode::SERVICE_UNAVAILABLE, "busy", "the credential's task has commands pending; try again");
    }
    json_response(StatusCode::ACCEPTED, json!({"tool": tool, "action": action, "accepted": true}))
}

/// `/ready`'s body in report mode: ready, and loud about what is not enforced.
const REPORT_READY: &str = "ready (REPORT MODE: the policy is not enforced; requests no route allows \
                            are forwarded with the agent's own credentials and audited as request.would_deny)\n";

/// The control API's credential list.
pub fn credentials(shared: &Shared) -> Value {
    let live = shared.live.load();
    let now = shared.clock.now();
    let list: Vec<Value> = live
        .policy
        .tools
        .iter()
        .zip(&live.tools)
        .filter_map(|(tool, rt)| {
            let slot = rt.slot.as_ref()?;
            let token = slot.current();
            Some(json!({
                "tool": tool.name,
                "source": slot.source,
                "state": slot.state().as_str(),
                "credential_id": token.as_ref().map(|t| t.fingerprint.clone()),
                "issued_at": token.as_ref().map(|t| timestamp(t.issued_at)),
                "expires_at": token.as_ref().and_then(|t| t.expires_at).map(timestamp),
                "age_seconds": token.as_ref().and_then(|t| now.duration_since(t.issued_at).ok()).map(|d| d.as_secs()),
                "next_refresh_at": slot.next_refresh().map(timestamp),
                "consecutive_failures": slot.consecutive_failures(),
                "last_error": slot.last_error(),
                "lease_id": token.as_ref().and_then(|t| t.lease_id.clone()),
                "scopes": token.as_ref().and_then(|t| t.scopes.as_ref()).map(|s| json!({
                    "requested": s.requested, "granted": s.granted, "excess": s.excess(), "stated_by": s.stated_by,
                })),
                "required": tool.required,
            }))
        })
        .collect();
    let logins: Vec<Value> = shared
        .logins
        .all()
        .iter()
        .map(|l| {
            let mut v = l.describe();
            let users = live.policy.tools.iter().filter(|t| uses(t, &l.spec));
            let (tools, required): (Vec<&str>, Vec<bool>) = users.map(|t| (t.name.as_str(), t.required)).unzip();
            v["tools"] = json!(tools);
            v["required"] = json!(required.contains(&true));
            v
        })
        .collect();
    let certs: Vec<Value> = live
        .tools
        .iter()
        .filter_map(|rt| {
            let slot = rt.client_cert.as_ref()?;
            let c = slot.current();
            let (failures, last_error) = slot.failures();
            let state = match (&c, slot.usable(now)) {
                (None, _) => "pending",
                (Some(_), Some(_)) => "valid",
                (Some(_), None) => "expired",
            };
            Some(json!({
                "tool": &*rt.name,
                "state": state,
                "serial": c.as_ref().map(|c| c.serial.clone()),
                "issued_at": c.as_ref().map(|c| timestamp(c.issued_at)),
                "expires_at": c.as_ref().map(|c| timestamp(c.expires_at)),
                "consecutive_failures": failures,
                "last_error": last_error,
            }))
        })
        .collect();
    json!({"instance": live.policy.instance_id, "mode": live.policy.mode.as_str(), "credentials": list, "logins": logins, "client_certificates": certs})
}

fn uses(t: &crate::policy::Tool, login: &crate::policy::VaultLogin) -> bool {
    t.uses_login(login)
}

/// The policy in force, without secrets: tools, routes, limits.
pub fn describe_policy(p: &Policy) -> Value {
    let tools: Vec<Value> = p
        .tools
        .iter()
        .map(|t| {
            let inject = match &t.inject {
                Inject::Header { name, prefix, suffix } => json!({"header": name.as_str(), "value": format!("{prefix}{{token}}{suffix}")}),
                Inject::Query { param } => json!({"query": {"param": param}}),
                Inject::Basic { username } => json!({"basic": {"username": username}}),
            };
            let routes: Vec<Value> = t
                .routes
                .iter()
                .map(|r| {
                    json!({
                        "scheme": r.scheme.as_str(), "host": r.host.to_string(), "port": r.port,
                        "methods": r.methods.as_ref().map(|m| m.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>()),
                        "paths": r.paths.iter().map(|g| g.as_str().to_string()).collect::<Vec<_>>(),
                        "allow_private": r.allow_private,
                    })
                })
                .collect();
            json!({
                "name": t.name,
                "credential": t.credential.as_ref().map(|c| c.source()),
                "required": t.required,
                "inject": inject,
                "upstream": t.upstream.as_ref().map(|u| format!("{}://{}:{}{}", u.scheme.as_str(), u.host, u.port, u.path_prefix)),
                "selected_by_header": t.selected_by_header,
                "routes": routes,
            })
        })
        .collect();
    let l = &p.limits;
    json!({
        "instance": p.instance_id,
        "mode": p.mode.as_str(),
        "listen": {"proxy": p.listen.proxy.to_string(), "admin": p.listen.admin.to_string(), "control": p.listen.control.to_string(),
                   "proxy_auth": p.listen.proxy_auth.is_some(), "control_auth": p.listen.control_auth.is_some()},
        "limits": {
            "header_read_timeout": humantime::format_duration(l.header_read_timeout).to_string(),
            "max_header_bytes": l.max_header_bytes, "max_headers": l.max_headers,
            "connect_timeout": humantime::format_duration(l.connect_timeout).to_string(),
            "response_header_timeout": humantime::format_duration(l.response_header_timeout).to_string(),
            "idle_timeout": humantime::format_duration(l.idle_timeout).to_string(),
            "max_connections": l.max_connections,
        },
        "tools": tools,
    })
}
