//! Start-up and shutdown: load the policy, bind the proxy, admin and control listeners, start
//! each one's accept loop, and stop them in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::clock::Clock;
use crate::config::{ConfigErrors, Overrides};
use crate::metrics::Metrics;
use crate::proxy::relay::Open;
use crate::proxy::Accept;
use crate::state::Shared;
use crate::tls::Interceptor;

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policy file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The control listener could not be bound.
    #[error("cannot listen on {addr} (control): {source}")]
    Control {
        /// Its address.
        addr: crate::policy::ControlAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The pod-local CA or its files could not be made.
    #[error("interception: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running proxy: its bound addresses and a way to stop it.
pub struct Running {
    /// Where agents connect.
    pub proxy_addr: SocketAddr,
    /// `/metrics`, `/live`, `/ready`.
    pub admin_addr: SocketAddr,
    /// The control API (a Unix socket, or TCP with its bound port).
    pub control: crate::policy::ControlAddr,
    /// Shared state (tests inspect it).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// Fires when the shutdown deadline has passed: relays still open stop.
    hard_stop: watch::Sender<bool>,
    open: Open,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}

/// Load the policy, bind the listeners, and serve. Must run inside a Tokio runtime.
pub async fn start(config_path: PathBuf) -> Result<Running, StartError> {
    start_with(config_path, Overrides::default(), Clock::system()).await
}

/// [`start`] with a given clock (tests jump its wall time).
pub async fn start_with_clock(config_path: PathBuf, clock: Clock) -> Result<Running, StartError> {
    start_with(config_path, Overrides::default(), clock).await
}

/// [`start`] with the command line's overrides and a clock.
pub async fn start_with(config_path: PathBuf, overrides: Overrides, clock: Clock) -> Result<Running, StartError> {
    let (text, policy) = crate::config::load_text(&config_path, &overrides)?;
    let proxy = bind("proxy", policy.listen.proxy).await?;
    let admin = bind("admin", policy.listen.admin).await?;
    let control = crate::admin::control::bind(&policy.listen.control)
        .await
        .map_err(|source| StartError::Control { addr: policy.listen.control.clone(), source })?;
    let control_addr = control.addr();
    let mut own: Vec<SocketAddr> = [proxy.local_addr(), admin.local_addr()].into_iter().flatten().collect();
    if let crate::policy::ControlAddr::Tcp(a) = control_addr {
        own.push(a);
        if policy.listen.control_auth.is_none() {
            tracing::warn!(
                control = %a,
                "the control API listens on TCP without listen.control_auth_file: anything sharing this \
                 loopback (in a pod, the agent) can rotate, revoke and read the policy; prefer unix:PATH"
            );
        }
    }
    let metrics = Metrics::new();
    metrics.config_last_reload_success.set(1);
    metrics.config_reloads.with_label_values(&["ok"]).inc();
    let max_connections = policy.limits.max_connections;
    let interception = policy.interception.clone();
    let hosts = policy.intercepted_hosts();
    let shared = Shared::new(policy, config_path, own.clone(), overrides, metrics, clock);
    // The CA files exist before any listener serves, so before /ready can be true.
    if let Some(settings) = &interception {
        let tls = Interceptor::start(settings, &hosts, &shared.metrics, &shared.audit, &shared.clock)?;
        tokio::spawn(crate::tls::renewals(Arc::downgrade(&tls)));
        let _ = shared.tls.set(tls);
    }
    seed_rng_in_background();
    let (shutdown, rx) = watch::channel(false);
    let (hard_stop, stop_rx) = watch::channel(false);
    let (connections, open) = crate::proxy::relay::tracker();
    let sem = Arc::new(Semaphore::new(max_connections));
    let accept = Accept { shared: shared.clone(), sem, connections, stop: stop_rx };
    tokio::spawn(crate::proxy::accept(proxy, accept, rx.clone()));
    tokio::spawn(crate::admin::serve_admin(admin, shared.clone(), rx.clone()));
    tokio::spawn(crate::admin::serve_control(control, shared.clone(), rx));
    shared.spawn_reloader(text);
    tracing::info!(proxy = %own[0], admin = %own[1], control = %control_addr, "credproxy listening");
    if shared.live.load().policy.mode == crate::policy::Mode::Report {
        crate::state::announce_mode(crate::policy::Mode::Report);
    }
    Ok(Running { proxy_addr: own[0], admin_addr: own[1], control: control_addr, shared, shutdown, hard_stop, open })
}

/// aws-lc seeds its random generator from CPU jitter on first use, tens of milliseconds of CPU:
/// do that once now on a thread at the lowest priority, so that neither start nor (most likely)
/// the first TLS handshake waits for it. Nice 19 rather than the idle class: a handshake that
/// does meet the seeding blocks until it ends, and the seeding thread must then get the core.
fn seed_rng_in_background() {
    let _ = std::thread::Builder::new().name("rng-seed".into()).spawn(|| {
        // SAFETY: setpriority(PRIO_PROCESS, 0, …) changes the calling thread's nice value only.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
        let _ = aws_lc_rs::rand::fill(&mut [0u8; 1]);
    });
}

impl Running {
    /// Stop accepting, let in-flight requests finish up to `deadline`, flush audit events.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let until = tokio::time::Instant::now() + deadline;
        // The accept loop drops its tracker as it stops; each connection drops its own at its end.
        let _ = tokio::time::timeout_at(until, self.open.closed()).await;
        let left = self.open.count();
        if left > 0 {
            tracing::warn!(connections = left, "shutdown deadline reached with connections still open");
        }
        let _ = self.hard_stop.send(true);
        // Rotating credentials stop; those with `revoke_on_shutdown` revoke first, within the deadline.
        let live = self.shared.live.load();
        let mut acks = Vec::new();
        for slot in live.tools.iter().filter_map(|t| t.slot.as_ref()) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if slot.command(crate::creds::Command::Shutdown(tx)) {
                acks.push(rx);
            }
        }
        let until = until.max(tokio::time::Instant::now() + Duration::from_secs(1));
        for ack in acks {
            if tokio::time::timeout_at(until, ack).await.is_err() {
                tracing::warn!("shutdown deadline reached before every credential was revoked");
                break;
            }
        }
        // Then the Vault logins, whose tokens the leases above were revoked with. A token is
        // revoked only when every tool using it asks (revoking it revokes their leases too).
        let policy = live.policy.clone();
        let every_tool_revokes = move |login: &crate::policy::VaultLogin| {
            policy.tools.iter().filter(|t| t.uses_login(login)).all(|t| match &t.credential {
                Some(crate::policy::CredentialSpec::Vault(v)) if v.login == *login => v.life.revoke_on_shutdown,
                // A client certificate alone on this login does not ask for its revocation.
                _ => false,
            })
        };
        self.shared.logins.shutdown(every_tool_revokes, until).await;
        self.shared.audit.flush().await;
    }
}
