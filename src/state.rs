//! What the request path reads — one policy version with its slots, clients and metric handles —
//! and how a (re)load builds it, keeping credentials whose settings did not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderName;

use crate::audit::Audit;
use crate::clock::Clock;
use crate::config::watch::FsWatch;
use crate::config::Overrides;

use crate::creds::vault::login::{LoginEnv, Logins};
use crate::creds::vault::pki::CertSlot;
use crate::creds::Slot;
use crate::digest::Keyed;
use crate::metrics::{Metrics, ToolMetrics};
use crate::outbound::{Client, ClientCert, ClientOpts, ConnectSettings, Upstreams};
use crate::policy::{AuditRequests, CredentialSpec, Inject, Mode, Policy, Scheme, Tool, VaultLogin};
use crate::tls::Interceptor;

mod credentials;
mod reload;
use credentials::{CertEntry, CredEntry, CredKey};
pub use reload::announce_mode;

/// Headers removed from every credentialed request, besides the tool's `strip_headers` and its
/// injected header (see the README).
pub fn builtin_strip() -> [HeaderName; 5] {
    [
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("api-key"),
        HeaderName::from_static("credproxy-tool"),
    ]
}

/// One policy version, ready for the request path.
pub struct Live {
    /// The validated policy.
    pub policy: Arc<Policy>,
    /// Per tool, in the policy's order.
    pub tools: Vec<ToolRt>,
    /// The key of the fingerprints given to the credentials agents send.
    pub fingerprints: Arc<Keyed>,
    /// Report mode's clients for requests no route allows, by TLS and `allow_private`, built on
    /// first use.
    unlisted: [RouteClients; 4],
}

impl Live {
    fn new(policy: Arc<Policy>, tools: Vec<ToolRt>, fingerprints: Arc<Keyed>) -> Self {
        Live { policy, tools, fingerprints, unlisted: Default::default() }
    }

    /// The client report mode forwards a request no route allows with: no tool's pool (its own,
    /// under the name `""` no tool can have), system roots only, private addresses refused
    /// unless `target.1` (see [`Policy::private_allowed`]).
    pub fn unlisted_client(
        &self,
        upstreams: &Upstreams,
        target: (Scheme, bool),
        upgrade: bool,
        idle: Duration,
    ) -> &Client {
        let (tls, allow_private) = (target.0 == Scheme::Https, target.1);
        let rc = &self.unlisted[usize::from(tls) * 2 + usize::from(allow_private)];
        let cell = if upgrade { &rc.upgrade } else { &rc.plain };
        let opts = ClientOpts { tls, allow_private, http1_only: upgrade, idle };
        cell.get_or_init(|| upstreams.client(&Arc::from(""), &[], None, opts))
    }
}

/// A tool's request-time handles.
pub struct ToolRt {
    /// The tool's name, shared into error bodies.
    pub name: Arc<str>,
    /// The credential slot, when the tool has a credential.
    pub slot: Option<Arc<Slot>>,
    /// Request counters and duration histogram.
    pub metrics: ToolMetrics,
    /// Per route: the pooled client and an HTTP/1.1-only one for upgrades, built on first use
    /// (so a policy of plain-HTTP tools never loads TLS roots).
    pub clients: Vec<RouteClients>,
    /// Everything removed from requests (and their trailers) before injection.
    pub strip: Arc<[HeaderName]>,
    /// The client certificate the tool's upstream connections present (mTLS), when it has one.
    pub client_cert: Option<Arc<CertSlot>>,
}

/// A route's clients, each built once on first use (then an atomic load).
#[derive(Default)]
pub struct RouteClients {
    plain: OnceLock<Client>,
    upgrade: OnceLock<Client>,
}

impl ToolRt {
    /// The client for `route` of `tool` (HTTP/1.1-only when `upgrade`).
    pub fn client(&self, upstreams: &Upstreams, tool: &Tool, route: usize, upgrade: bool, idle: Duration) -> &Client {
        let rc = &self.clients[route];
        let cell = if upgrade { &rc.upgrade } else { &rc.plain };
        let r = &tool.routes[route];
        let opts =
            ClientOpts { tls: r.scheme == Scheme::Https, allow_private: r.allow_private, http1_only: upgrade, idle };
        cell.get_or_init(|| {
            let cert = self.client_cert.clone().map(|c| c as ClientCert);
            upstreams.client(&self.name, &tool.ca_certs, cert.as_ref(), opts)
        })
    }
}

/// Shared by every listener for the life of the process.
pub struct Shared {
    /// The policy version in force; each request loads it once.
    pub live: ArcSwap<Live>,
    /// Metrics.
    pub metrics: Metrics,
    /// Audit events.
    pub audit: Audit,
    /// Upstream clients.
    pub upstreams: Arc<Upstreams>,
    /// Time, for credentials and the request path's expiry checks.
    pub clock: Clock,
    /// Request metrics for traffic that matched no tool (`tool=""`).
    pub no_tool: ToolMetrics,
    /// File watcher (policy and credential files).
    pub watch: Arc<FsWatch>,
    /// The policy file.
    pub config_path: PathBuf,
    /// The listeners' bound addresses (proxy, admin, control).
    pub own: Vec<SocketAddr>,
    /// The command line's overrides, applied to every reload as to the first load.
    pub overrides: Overrides,
    /// The pod-local CA and leaf cache, set at start when interception is on.
    pub tls: OnceLock<Arc<Interceptor>>,
    /// Vault logins, shared by the tools whose login settings are equal.
    pub logins: Arc<Logins>,
    /// This process's fingerprint key, used while the policy names no `audit.fingerprint_key_file`.
    random_key: Arc<Keyed>,
    creds: Mutex<HashMap<String, CredEntry>>,
    certs: Mutex<HashMap<String, CertEntry>>,
}

impl Shared {
    /// Build the shared state around a first policy. Must run inside a Tokio runtime.
    pub fn new(
        policy: Policy,
        config_path: PathBuf,
        own: Vec<SocketAddr>,
        overrides: Overrides,
        metrics: Metrics,
        clock: Clock,
    ) -> Arc<Self> {
        let audit = Audit::start(policy.audit.file.clone(), &policy.instance_id, metrics.clone());
        let no_tool = metrics.tool("", 0);
        let upstreams = Arc::new(Upstreams::new());
        let watch = FsWatch::new();
        let logins = Logins::new(LoginEnv {
            metrics: metrics.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            upstreams: upstreams.clone(),
            watch: watch.clone(),
        });
        let creds = Mutex::new(HashMap::new());
        let policy = Arc::new(policy);
        // Tool handles are filled in by `install` below, before any listener serves.
        let random_key = Arc::new(Keyed::random());
        let first = Live::new(policy.clone(), Vec::new(), random_key.clone());
        let shared = Arc::new(Shared {
            live: ArcSwap::from_pointee(first),
            metrics,
            audit,
            upstreams,
            clock,
            no_tool,
            watch,
            config_path,
            own,
            overrides,
            tls: OnceLock::new(),
            random_key,
            logins,
            creds,
            certs: Mutex::default(),
        });
        shared.install(policy);
        shared
    }

    /// Make `policy` the one in force: sync credential tasks, resolve clients and metrics, swap.
    pub fn install(&self, policy: Arc<Policy>) {
        self.upstreams.configure(ConnectSettings {
            resolve: crate::policy::Resolve { entries: policy.resolve.entries.clone() },
            own: self.own.clone(),
            // Read again at each load: a pod's addresses are fixed, a laptop's may move.
            local: if self.own.iter().any(|o| o.ip().is_unspecified()) {
                crate::outbound::interface_addresses()
            } else {
                Vec::new()
            },
            connect_timeout: policy.limits.connect_timeout,
        });
        if policy.tools.iter().flat_map(|t| &t.routes).any(|r| r.scheme == crate::policy::Scheme::Https) {
            tokio::task::spawn_blocking(crate::certs::warm_system_roots);
        }
        let mut creds = self.creds.lock().unwrap_or_else(|e| e.into_inner());
        // A removed credential's lease is revoked (the settings it was read with are gone).
        let removed: Vec<String> = creds
            .keys()
            .filter(|name| policy.tool_index(name).is_none_or(|i| policy.tools[i].credential.is_none()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(e) = creds.remove(&name) {
                for gauge in [&self.metrics.credential_required, &self.metrics.credential_scope_excess] {
                    let _ = gauge.remove_label_values(&[&name]);
                }
                let _ = self.metrics.credential_lifetime.remove_label_values(&[&name]);
                self.revoke_lease(&name, &e);
            }
        }
        let mut tools = Vec::with_capacity(policy.tools.len());
        for tool in &policy.tools {
            let name: Arc<str> = Arc::from(tool.name.as_str());
            let slot = tool.credential.as_ref().map(|spec| {
                self.metrics.credential_required.with_label_values(&[&tool.name]).set(i64::from(tool.required));
                let key = CredKey {
                    spec: spec.clone(),
                    inject: tool.inject.clone(),
                    not_before: tool.not_before,
                    refresh: tool.refresh,
                };
                match creds.get(&tool.name) {
                    Some(e) if e.key == key => e.slot.clone(),
                    old => {
                        let entry = self.start_credential(tool, &name, key, old);
                        let slot = entry.slot.clone();
                        // The new task reads its own secret: the old lease is revoked (a lease
                        // is never carried over, its renewal belongs to the old task).
                        if let Some(old) = creds.insert(tool.name.clone(), entry) {
                            self.revoke_lease(&name, &old);
                        }
                        slot
                    }
                }
            });
            let clients = tool.routes.iter().map(|_| RouteClients::default()).collect();
            let mut strip: Vec<HeaderName> = Vec::new();
            if tool.credential.is_some() {
                strip.extend(builtin_strip());
                if let Inject::Header { name, .. } = &tool.inject {
                    strip.push(name.clone());
                }
            } else {
                strip.push(HeaderName::from_static("credproxy-tool"));
            }
            strip.extend(tool.strip_headers.iter().cloned());
            let client_cert = tool.client_cert.as_ref().map(|spec| self.client_cert(tool, &name, spec));
            tools.push(ToolRt {
                name: name.clone(),
                slot,
                metrics: self.metrics.tool(&name, tool.routes.len()),
                clients,
                strip: strip.into(),
                client_cert,
            });
        }
        drop(creds);
        self.certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| policy.tool_index(name).is_some_and(|i| policy.tools[i].client_cert.is_some()));
        let logins: Vec<&VaultLogin> = policy
            .tools
            .iter()
            .flat_map(|t| {
                let cred = match &t.credential {
                    Some(CredentialSpec::Vault(v)) => Some(&v.login),
                    _ => None,
                };
                cred.into_iter().chain(t.client_cert.as_ref().map(|c| &c.login))
            })
            .collect();
        self.logins.retain(&logins);
        for m in [Mode::Enforce, Mode::Report] {
            self.metrics.mode.with_label_values(&[m.as_str()]).set(i64::from(m == policy.mode));
        }
        let fingerprints = match &policy.audit.fingerprint_key {
            Some(k) => Arc::new(Keyed::new(secrecy::ExposeSecret::expose_secret(k).as_bytes())),
            None => self.random_key.clone(),
        };
        let keyless = policy.audited_requests() != AuditRequests::None && policy.audit.fingerprint_key.is_none();
        let old = self.live.swap(Arc::new(Live::new(policy.clone(), tools, fingerprints)));
        if keyless && (Arc::ptr_eq(&old.policy, &policy) || old.policy.audit.fingerprint_key.is_some()) {
            tracing::warn!(
                "audit.fingerprint_key_file is not set: the fingerprints of agents' credentials in audit \
                 events use a random key of this process and match only within this run"
            );
        }
        // Route series stay bounded by the policy in force.
        for t in &old.tools {
            let kept = policy.tool_index(&t.name).map_or(0, |i| policy.tools[i].routes.len());
            self.metrics.forget_routes(&t.name, kept, t.metrics.routes.len());
        }
    }

    /// Ready when every required tool's credential is fetched and not expired.
    pub fn not_ready(&self) -> Vec<Arc<str>> {
        let live = self.live.load();
        let now = self.clock.now();
        live.policy
            .tools
            .iter()
            .zip(&live.tools)
            .filter(|(t, rt)| {
                let cert_missing = rt.client_cert.as_ref().is_some_and(|c| c.usable(now).is_none());
                t.required && (rt.slot.as_ref().is_some_and(|s| s.usable(now).is_none()) || cert_missing)
            })
            .map(|(_, rt)| rt.name.clone())
            .chain(
                // A login is required when any of its tools is.
                self.logins
                    .all()
                    .into_iter()
                    .filter(|l| l.usable(now).is_none())
                    .filter(|l| live.policy.tools.iter().any(|t| t.required && t.uses_login(&l.spec)))
                    .map(|l| Arc::from(format!("vault login {}", l.label))),
            )
            .collect()
    }
}
