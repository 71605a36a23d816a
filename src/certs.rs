//! Certificates read from disk: PEM CA files and the system's root set, loaded once. Below
//! `config/` (which checks a tool's `ca_file`), `outbound/` (upstream roots) and `tls/` (the bundle).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Read a PEM file of CA certificates (at least one).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|_| "cannot read the CA file".to_string())?;
    let certs: Vec<_> = iter.collect::<Result<_, _>>().map_err(|_| "the CA file is not valid PEM".to_string())?;
    if certs.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    Ok(certs)
}

/// The system's trusted roots, as certificates and as a rustls store.
pub struct SystemRoots {
    /// Every certificate the system trusts that parses as a trust anchor, in the system's order.
    pub certs: Vec<CertificateDer<'static>>,
    /// The same, for rustls.
    pub store: Arc<RootCertStore>,
    /// True when the system had none and the compiled-in Mozilla set stands in for it.
    pub compiled_in: bool,
}

/// The common name of every pod-local CA credproxy generates. A root by that name found among
/// the system's (an `SSL_CERT_FILE` pointing at a bundle credproxy wrote, inherited by credproxy
/// itself) is never trusted upstream nor copied into a new bundle.
pub const POD_CA_NAME: &str = "credproxy pod-local CA";

/// Load the system roots now (from a blocking thread at load time), not at the first use.
pub fn warm_system_roots() {
    let _ = system_roots();
}

/// The system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the platform's store), read once.
/// When the system has none, the compiled-in Mozilla set (webpki-root-certs) is used, so a
/// bundle written from it is still a full root set.
pub fn system_roots() -> &'static SystemRoots {
    static ROOTS: OnceLock<SystemRoots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let mut certs = Vec::new();
        let mut skipped = 0;
        for cert in found.certs {
            if certs.contains(&cert) || store.add(cert.clone()).is_err() {
                continue;
            }
            let subject = store.roots.last().map(|a| a.subject.as_ref()).unwrap_or_default();
            if subject.windows(POD_CA_NAME.len()).any(|w| w == POD_CA_NAME.as_bytes()) {
                store.roots.pop();
                skipped += 1;
                continue;
            }
            certs.push(cert);
        }
        if skipped > 0 {
            tracing::warn!(skipped, "the system roots hold credproxy pod-local CAs (is SSL_CERT_FILE a bundle credproxy wrote?); they are not trusted");
        }
        let compiled_in = certs.is_empty();
        if compiled_in {
            tracing::warn!("no system root certificates found; using the compiled-in Mozilla roots");
            certs = webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec();
            store.add_parsable_certificates(certs.iter().cloned());
        }
        SystemRoots { certs, store: Arc::new(store), compiled_in }
    })
}
