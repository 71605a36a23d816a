//! Every metric credproxy exports, declared and registered once in one custom registry.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// All metrics. Cheap to share behind an `Arc`; per-tool handles are resolved at load time.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `credproxy_requests_total{tool,outcome}`.
    pub requests: IntCounterVec,
    /// `credproxy_request_duration_seconds{tool}`.
    pub request_duration: HistogramVec,
    /// `credproxy_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `credproxy_config_last_reload_success` (1 or 0).
    pub config_last_reload_success: IntGauge,
    /// `credproxy_config_last_reload_timestamp_seconds`.
    pub config_last_reload_timestamp: Gauge,
    /// `credproxy_connections_active`.
    pub connections_active: IntGauge,
    /// `credproxy_connections_shed_total`.
    pub connections_shed: IntCounter,
    /// `credproxy_audit_events_dropped_total`: audit lines lost because the writer fell behind.
    pub audit_dropped: IntCounter,
    /// `credproxy_credential_valid{tool}`.
    pub credential_valid: IntGaugeVec,
    /// `credproxy_credential_required{tool}`: 1 when `/ready` waits for the tool's credential.
    pub credential_required: IntGaugeVec,
    /// `credproxy_credential_issued_timestamp_seconds{tool}`.
    pub credential_issued: GaugeVec,
    /// `credproxy_credential_expiration_timestamp_seconds{tool}` (absent for tokens without expiry).
    pub credential_expiration: GaugeVec,
    /// `credproxy_credential_last_refresh_success_timestamp_seconds{tool}`.
    pub credential_last_success: GaugeVec,
    /// `credproxy_credential_refreshes_total{tool,source,result}`.
    pub credential_refreshes: IntCounterVec,
    /// `credproxy_credential_refresh_errors_total{tool,source,reason}`.
    pub credential_refresh_errors: IntCounterVec,
    /// `credproxy_credential_refresh_consecutive_failures{tool}`.
    pub credential_consecutive_failures: IntGaugeVec,
    /// `credproxy_credential_task_restarts_total{tool}`.
    pub credential_task_restarts: IntCounterVec,
    /// `credproxy_credential_revocations_total{tool,reason}`.
    pub credential_revocations: IntCounterVec,
    /// `credproxy_credential_renewals_total{tool,result}`: lease renewals (Vault).
    pub credential_renewals: IntCounterVec,
    /// `credproxy_vault_login_valid{login}`: 1 while the login holds a usable Vault token.
    pub vault_login_valid: IntGaugeVec,
    /// `credproxy_vault_login_expiration_timestamp_seconds{login}`.
    pub vault_login_expiration: GaugeVec,
    /// `credproxy_vault_logins_total{login,result}`: fresh logins.
    pub vault_logins: IntCounterVec,
    /// `credproxy_vault_login_renewals_total{login,result}`: Vault token renewals.
    pub vault_login_renewals: IntCounterVec,
    /// `credproxy_vault_login_errors_total{login,reason}`.
    pub vault_login_errors: IntCounterVec,
    /// `credproxy_credential_refresh_duration_seconds{tool,source}`.
    pub credential_refresh_duration: HistogramVec,
    /// `credproxy_client_certificate_issues_total{tool,result}`: client certificates from Vault's PKI.
    pub client_cert_issues: IntCounterVec,
    /// `credproxy_client_certificate_expiration_timestamp_seconds{tool}` (0 once dropped).
    pub client_cert_expiration: GaugeVec,
    /// `credproxy_tls_interceptions_total{result}`: intercepted CONNECTs by handshake result.
    pub tls_interceptions: IntCounterVec,
    /// `credproxy_tls_leaf_certs_cached`.
    pub tls_leaf_certs_cached: IntGauge,
    /// `credproxy_ca_expiration_timestamp_seconds`: when the first pod CA without a successor expires.
    pub ca_expiration: Gauge,
    /// `credproxy_credential_scope_excess{tool}`: granted scopes that were not requested (OAuth).
    pub credential_scope_excess: IntGaugeVec,
    /// `credproxy_credential_lifetime_seconds{tool}`: the current token's lifetime, issue to expiry.
    pub credential_lifetime: GaugeVec,
    /// `credproxy_mode{mode}`: 1 for the mode in force (`enforce` or `report`), 0 for the other.
    pub mode: IntGaugeVec,
    /// `credproxy_route_requests_total{tool,route}`: requests each route allowed (route = its index).
    pub route_requests: IntCounterVec,
    /// `credproxy_route_last_used_timestamp_seconds{tool,route}` (0: not used since start).
    pub route_last_used: GaugeVec,
}

/// One tool's request metrics, resolved once per policy load so the request path only touches atomics.
#[derive(Clone)]
pub struct ToolMetrics {
    /// outcome="injected".
    pub injected: IntCounter,
    /// outcome="passthrough".
    pub passthrough: IntCounter,
    /// outcome="denied".
    pub denied: IntCounter,
    /// outcome="credential_unavailable".
    pub credential_unavailable: IntCounter,
    /// outcome="upstream_error".
    pub upstream_error: IntCounter,
    /// outcome="would_deny" (report mode: forwarded untouched, though no route allows it).
    pub would_deny: IntCounter,
    /// Request duration.
    pub duration: Histogram,
    /// Per route of the tool, in the policy's order.
    pub routes: Box<[RouteMetrics]>,
}

/// One route's use, counted when the route allows a request.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Requests the route allowed.
    pub requests: IntCounter,
    /// When it last allowed one (Unix seconds).
    pub last_used: Gauge,
}

impl RouteMetrics {
    /// Count one request allowed by this route at `now`.
    pub fn used(&self, now: std::time::SystemTime) {
        self.requests.inc();
        self.last_used.set(crate::clock::unix(now).as_secs_f64());
    }
}

/// The outcome label of `credproxy_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded with a credential.
    Injected,
    /// Forwarded without one (tool has none).
    Passthrough,
    /// Refused by credproxy.
    Denied,
    /// No valid credential.
    CredentialUnavailable,
    /// The upstream failed.
    UpstreamError,
    /// Report mode: no route allows it, forwarded untouched anyway.
    WouldDeny,
}

impl ToolMetrics {
    /// Count one request.
    pub fn count(&self, outcome: Outcome, seconds: f64) {
        match outcome {
            Outcome::Injected => &self.injected,
            Outcome::Passthrough => &self.passthrough,
            Outcome::Denied => &self.denied,
            Outcome::CredentialUnavailable => &self.credential_unavailable,
            Outcome::UpstreamError => &self.upstream_error,
            Outcome::WouldDeny => &self.would_deny,
        }
        .inc();
        self.duration.observe(seconds);
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl Metrics {
    /// Create and register every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, IntCounterVec::new(Opts::new(name, help), labels).unwrap())
        };
        let gauge_vec = |name: &str, help: &str| reg(&r, GaugeVec::new(Opts::new(name, help), &["tool"]).unwrap());
        let buckets =
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let m = Metrics {
            requests: counter_vec("credproxy_requests_total", "Requests by tool and outcome.", &["tool", "outcome"]),
            request_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("credproxy_request_duration_seconds", "Time to the response head, by tool.")
                        .buckets(buckets),
                    &["tool"],
                )
                .unwrap(),
            ),
            config_reloads: counter_vec("credproxy_config_reloads_total", "Policy reloads by result.", &["result"]),
            config_last_reload_success: reg(
                &r,
                IntGauge::new("credproxy_config_last_reload_success", "1 if the last policy reload succeeded.")
                    .unwrap(),
            ),
            config_last_reload_timestamp: reg(
                &r,
                Gauge::new("credproxy_config_last_reload_timestamp_seconds", "Time of the last policy load attempt.")
                    .unwrap(),
            ),
            connections_active: reg(
                &r,
                IntGauge::new("credproxy_connections_active", "Open agent connections.").unwrap(),
            ),
            connections_shed: reg(
                &r,
                IntCounter::new("credproxy_connections_shed_total", "Agent connections refused over max_connections.")
                    .unwrap(),
            ),
            audit_dropped: reg(
                &r,
                IntCounter::new(
                    "credproxy_audit_events_dropped_total",
                    "Audit events lost because the writer fell behind.",
                )
                .unwrap(),
            ),
            credential_valid: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("credproxy_credential_valid", "1 while a non-expired token is published."),
                    &["tool"],
                )
                .unwrap(),
            ),
            credential_required: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "credproxy_credential_required",
                        "1 when the tool is required: /ready waits for its credential; 0 when optional.",
                    ),
                    &["tool"],
                )
                .unwrap(),
            ),
            credential_issued: gauge_vec(
                "credproxy_credential_issued_timestamp_seconds",
                "When the current token was issued.",
            ),
            credential_expiration: gauge_vec(
                "credproxy_credential_expiration_timestamp_seconds",
                "When the current token expires.",
            ),
            credential_last_success: gauge_vec(
                "credproxy_credential_last_refresh_success_timestamp_seconds",
                "When a token was last fetched successfully.",
            ),
            credential_refreshes: counter_vec(
                "credproxy_credential_refreshes_total",
                "Credential fetches by result.",
                &["tool", "source", "result"],
            ),
            credential_refresh_errors: counter_vec(
                "credproxy_credential_refresh_errors_total",
                "Failed credential fetches by reason.",
                &["tool", "source", "reason"],
            ),
            credential_consecutive_failures: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "credproxy_credential_refresh_consecutive_failures",
                        "Failed fetches since the last success.",
                    ),
                    &["tool"],
                )
                .unwrap(),
            ),
            credential_task_restarts: counter_vec(
                "credproxy_credential_task_restarts_total",
                "Credential tasks restarted after a panic.",
                &["tool"],
            ),
            tls_interceptions: counter_vec(
                "credproxy_tls_interceptions_total",
                "Intercepted CONNECTs by result: ok, handshake_error, mint_error.",
                &["result"],
            ),
            tls_leaf_certs_cached: reg(
                &r,
                IntGauge::new("credproxy_tls_leaf_certs_cached", "Leaf certificates held for intercepted hosts.")
                    .unwrap(),
            ),
            ca_expiration: reg(
                &r,
                Gauge::new(
                    "credproxy_ca_expiration_timestamp_seconds",
                    "When interception stops unless renewed: the first pod-local CA without a successor to expire.",
                )
                .unwrap(),
            ),
            credential_revocations: counter_vec(
                "credproxy_credential_revocations_total",
                "Tokens revoked, by reason.",
                &["tool", "reason"],
            ),
            credential_renewals: counter_vec(
                "credproxy_credential_renewals_total",
                "Lease renewals (Vault) by result.",
                &["tool", "result"],
            ),
            vault_login_valid: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("credproxy_vault_login_valid", "1 while the Vault login holds a usable token."),
                    &["login"],
                )
                .unwrap(),
            ),
            vault_login_expiration: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "credproxy_vault_login_expiration_timestamp_seconds",
                        "When the Vault login's token expires.",
                    ),
                    &["login"],
                )
                .unwrap(),
            ),
            vault_logins: counter_vec("credproxy_vault_logins_total", "Vault logins by result.", &["login", "result"]),
            vault_login_renewals: counter_vec(
                "credproxy_vault_login_renewals_total",
                "Vault token renewals by result.",
                &["login", "result"],
            ),
            vault_login_errors: counter_vec(
                "credproxy_vault_login_errors_total",
                "Failed Vault logins and renewals by reason.",
                &["login", "reason"],
            ),
            client_cert_issues: counter_vec(
                "credproxy_client_certificate_issues_total",
                "Client certificates issued by Vault's PKI engine, by result.",
                &["tool", "result"],
            ),
            client_cert_expiration: gauge_vec(
                "credproxy_client_certificate_expiration_timestamp_seconds",
                "When the tool's client certificate expires (0 once dropped).",
            ),
            credential_refresh_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "credproxy_credential_refresh_duration_seconds",
                        "Time one credential fetch took.",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                    &["tool", "source"],
                )
                .unwrap(),
            ),
            credential_scope_excess: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "credproxy_credential_scope_excess",
                        "Scopes the authority granted that were not requested (OAuth sources).",
                    ),
                    &["tool"],
                )
                .unwrap(),
            ),
            credential_lifetime: gauge_vec(
                "credproxy_credential_lifetime_seconds",
                "The current token's lifetime from issue to expiry (after max_ttl).",
            ),
            mode: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("credproxy_mode", "1 for the policy mode in force: enforce, or report (nothing denied)."),
                    &["mode"],
                )
                .unwrap(),
            ),
            route_requests: counter_vec(
                "credproxy_route_requests_total",
                "Requests each policy route allowed; route is the route's index in the tool.",
                &["tool", "route"],
            ),
            route_last_used: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "credproxy_route_last_used_timestamp_seconds",
                        "When the route last allowed a request (0: not since start).",
                    ),
                    &["tool", "route"],
                )
                .unwrap(),
            ),
            registry: r,
        };
        let build = reg(
            &m.registry,
            IntGaugeVec::new(Opts::new("credproxy_build_info", "Build information."), &["version"]).unwrap(),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registered once");
        m
    }

    /// Resolve one tool's request metrics and those of its `routes` routes (`""` and 0 for
    /// traffic that matched no tool).
    pub fn tool(&self, tool: &str, routes: usize) -> ToolMetrics {
        let c = |o: &str| self.requests.with_label_values(&[tool, o]);
        let routes = (0..routes)
            .map(|r| {
                let labels = [tool, &r.to_string()];
                RouteMetrics {
                    requests: self.route_requests.with_label_values(&labels),
                    last_used: self.route_last_used.with_label_values(&labels),
                }
            })
            .collect();
        ToolMetrics {
            injected: c("injected"),
            passthrough: c("passthrough"),
            denied: c("denied"),
            credential_unavailable: c("credential_unavailable"),
            upstream_error: c("upstream_error"),
            would_deny: c("would_deny"),
            duration: self.request_duration.with_label_values(&[tool]),
            routes,
        }
    }

    /// Forget the route series of `tool` from index `from` on: a reload removed those routes.
    pub fn forget_routes(&self, tool: &str, from: usize, to: usize) {
        for r in from..to {
            let labels = [tool, &r.to_string()];
            let _ = self.route_requests.remove_label_values(&labels);
            let _ = self.route_last_used.remove_label_values(&labels);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding never fails");
        String::from_utf8(buf).expect("text exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
