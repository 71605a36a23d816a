//! The pod-local CA for CONNECT interception: CAs generated in memory with name constraints,
//! the files agents trust, and a bounded cache of leaf certificates with their rustls server
//! configurations, minted once per host (concurrent first uses wait for the one minting).

pub mod ca;
pub mod files;
pub mod truststore;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::audit::Audit;
use crate::clock::Clock;
use crate::fields;
use crate::metrics::Metrics;
use crate::policy::{HostPattern, Interception};
use ca::{CaError, Constraints, PodCa};

/// Protocols offered to agents inside an intercepted tunnel.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A cached leaf: the server configuration for one host, and when to mint it anew.
struct CachedLeaf {
    config: Arc<ServerConfig>,
    renew_at: SystemTime,
}

/// Every CA of this process, the files, and the leaf cache.
pub struct Interceptor {
    settings: Interception,
    /// Read by every intercepted CONNECT; replaced (under `writer`) when a reload adds a CA.
    cas: ArcSwap<Vec<Arc<PodCa>>>,
    writer: Mutex<()>,
    leaves: quick_cache::sync::Cache<String, Arc<CachedLeaf>>,
    metrics: Metrics,
    audit: Audit,
    clock: Clock,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// A CA with less life left than this (or a sixth of its validity, when shorter) mints no more
/// leaves while a newer one can.
const MIN_CA_LIFE_LEFT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// TLS sessions kept per leaf for resumption (rustls keeps 256 by default: ~30 KB a leaf).
const SESSIONS_PER_LEAF: usize = 16;

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor").field("cas", &self.cas.load().len()).finish()
    }
}

/// Why interception could not start or serve a host.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Making a CA or leaf failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// An output file could not be written.
    #[error("{0}")]
    Write(String),
    /// rustls refused the leaf.
    #[error("TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl Interceptor {
    /// Generate the first CA for `hosts` and write the files, before any listener serves.
    pub fn start(
        settings: &Interception,
        hosts: &[HostPattern],
        metrics: &Metrics,
        audit: &Audit,
        clock: &Clock,
    ) -> Result<Arc<Self>, TlsError> {
        let this = Arc::new(Interceptor {
            settings: settings.clone(),
            cas: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(()),
            leaves: quick_cache::sync::Cache::new(settings.leaf_cache_size),
            metrics: metrics.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        });
        this.add_ca(Constraints::for_hosts(hosts))?;
        Ok(this)
    }

    /// After a reload: hosts that no CA's constraints permit get a CA of their own, appended to
    /// the files; the CAs already written keep serving theirs. Returns whether one was added.
    pub fn cover(&self, hosts: &[HostPattern]) -> Result<bool, TlsError> {
        let wanted = Constraints::for_hosts(hosts);
        let cas = self.cas.load();
        let uncovered = Constraints {
            dns: wanted.dns.into_iter().filter(|d| !cas.iter().any(|ca| ca.constraints.permits(d))).collect(),
            ips: wanted.ips.into_iter().filter(|ip| !cas.iter().any(|ca| ca.constraints.ips.contains(ip))).collect(),
        };
        if uncovered.is_empty() {
            return Ok(false);
        }
        self.add_ca(uncovered)?;
        Ok(true)
    }

    /// When the next CA is due for a successor: two thirds into the life of the first CA to end
    /// that has none yet.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.without_successor().into_iter().map(|(_, due)| due).min()
    }

    /// The constraints of each CA no later CA with the same constraints outlives, and when it is due.
    fn without_successor(&self) -> Vec<(Constraints, SystemTime)> {
        let third = self.settings.ca_validity / 3;
        let cas = self.cas.load();
        (cas.iter())
            .filter(|ca| !cas.iter().any(|o| o.constraints == ca.constraints && o.not_after > ca.not_after))
            .map(|ca| (ca.constraints.clone(), ca.not_after - third))
            .collect()
    }

    /// Give every CA in its last third of life a successor with the same constraints (appended to
    /// the files, audited), and take expired ones out of the files. Leaves come from the old CA
    /// while it has a day left, so agents that read the files before the successor came keep
    /// working. Returns how many CAs were added.
    pub fn renew(&self) -> Result<usize, TlsError> {
        let now = self.clock.now();
        if self.cas.load().iter().any(|ca| ca.not_after <= now) {
            let _writing = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let live: Vec<Arc<PodCa>> = self.cas.load().iter().filter(|ca| ca.not_after > now).cloned().collect();
            self.install(live)?;
            tracing::info!("expired pod-local CAs removed from the files");
        }
        let due: Vec<Constraints> =
            self.without_successor().into_iter().filter(|(_, at)| *at <= now).map(|(c, _)| c).collect();
        for constraints in &due {
            self.add_ca(constraints.clone())?;
        }
        Ok(due.len())
    }

    /// The next time [`Interceptor::renew`] has work: a renewal due, or a CA expiring.
    pub fn next_event(&self) -> Option<SystemTime> {
        let expiry = self.cas.load().iter().map(|ca| ca.not_after).min();
        [self.next_renewal(), expiry].into_iter().flatten().min()
    }

    /// Write the files for `all`, then publish it (called with `writer` held).
    fn install(&self, all: Vec<Arc<PodCa>>) -> Result<(), TlsError> {
        let roots = &crate::certs::system_roots().certs;
        files::write_all(&self.settings, roots, &all.iter().map(|c| &**c).collect::<Vec<_>>())
            .map_err(TlsError::Write)?;
        // When interception stops without a renewal: the first CA to end that has no successor.
        let last = (all.iter())
            .filter(|ca| !all.iter().any(|o| o.constraints == ca.constraints && o.not_after > ca.not_after))
            .map(|ca| ca.not_after)
            .min();
        if let Some(t) = last {
            self.metrics.ca_expiration.set(crate::clock::unix(t).as_secs_f64());
        }
        self.cas.store(Arc::new(all));
        Ok(())
    }

    fn add_ca(&self, constraints: Constraints) -> Result<(), TlsError> {
        let _writing = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let ca = Arc::new(PodCa::generate(constraints, now, self.settings.ca_validity)?);
        // Expired CAs leave the files; one being renewed stays until it expires, since agents
        // that read the files before its successor was added trust only it.
        let mut all: Vec<Arc<PodCa>> = self.cas.load().iter().filter(|old| old.not_after > now).cloned().collect();
        all.push(ca.clone());
        self.install(all)?;
        let expires_at = crate::audit::timestamp(ca.not_after);
        let constraints = ca.constraints.describe();
        tracing::info!(
            fingerprint = %ca.fingerprint,
            constraints = ?constraints,
            expires_at = %expires_at,
            ca_cert = %self.settings.ca_cert_out.display(),
            ca_bundle = %self.settings.ca_bundle_out.display(),
            "pod-local CA created"
        );
        self.audit.emit(
            "ca.created",
            fields! {"fingerprint" => &ca.fingerprint, "constraints" => constraints, "expires_at" => expires_at},
        );
        Ok(())
    }

    /// The CAs, oldest first.
    pub fn cas(&self) -> Arc<Vec<Arc<PodCa>>> {
        self.cas.load_full()
    }

    /// The server configuration for `host` (the CONNECT host, normalised): its leaf is minted on
    /// first use and cached; concurrent first uses wait for one minting.
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let now = self.clock.now();
        if let Some(hit) = self.leaves.get(host) {
            if hit.renew_at > now {
                return Ok(hit.config.clone());
            }
            self.leaves.remove(host);
        }
        let leaf = self.leaves.get_or_insert_async(host, async { self.mint(host, now).map(Arc::new) }).await?;
        self.metrics.tls_leaf_certs_cached.set(self.leaves.len() as i64);
        Ok(leaf.config.clone())
    }

    fn mint(&self, host: &str, now: SystemTime) -> Result<CachedLeaf, TlsError> {
        let cas = self.cas.load();
        // The oldest CA that permits the host with a day of life left (every agent, however
        // early it read the files, trusts it), else any that has not expired.
        let permits = |ca: &&Arc<PodCa>, until: SystemTime| ca.constraints.permits(host) && ca.not_after > until;
        let margin = MIN_CA_LIFE_LEFT.min(self.settings.ca_validity / 6);
        let ca = (cas.iter().find(|ca| permits(ca, now + margin)))
            .or_else(|| cas.iter().find(|ca| permits(ca, now)))
            .ok_or_else(|| CaError::OutsideConstraints(host.to_string()))?;
        let leaf = ca.mint(host, now)?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSIONS_PER_LEAF);
        // Renewed once two thirds of its life have passed.
        let life = leaf.not_after.duration_since(now).unwrap_or_default();
        Ok(CachedLeaf { config: Arc::new(config), renew_at: now + life * 2 / 3 })
    }
}

/// Renew the CAs as they come due and drop them as they expire, for as long as the interceptor
/// lives. The wall clock decides (a suspended laptop or a clock step is caught at the next
/// wakeup): at most a day, or a tenth of the CA validity, between wakeups; none otherwise.
pub async fn renewals(tls: std::sync::Weak<Interceptor>) {
    loop {
        let Some(t) = tls.upgrade() else { return };
        let now = t.clock.now();
        let cap = (t.settings.ca_validity / 10).min(std::time::Duration::from_secs(24 * 3600));
        let wait = t.next_event().map_or(cap, |at| at.duration_since(now).unwrap_or_default().min(cap));
        drop(t);
        tokio::time::sleep(wait).await;
        let Some(t) = tls.upgrade() else { return };
        if t.next_event().is_none_or(|at| at > t.clock.now()) {
            continue;
        }
        // Key generation and file writes: off the runtime's threads.
        match tokio::task::spawn_blocking(move || t.renew()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "renewing the pod-local CA failed; retrying in an hour");
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "the pod-local CA renewal task failed; no further renewals");
                return;
            }
        }
    }
}
