//! The files agents trust: the CA certificates alone, and the system's roots followed by them,
//! each written whole (temporary file, then rename) with mode 0644.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use super::ca::PodCa;
use crate::policy::Interception;

/// PEM of one certificate.
pub fn pem(cert: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", cert.as_ref()), config)
}

/// The bundle: every root of `roots`, then each CA.
pub fn bundle(roots: &[CertificateDer<'static>], cas: &[&PodCa]) -> String {
    let mut out = String::new();
    for root in roots {
        out.push_str(&pem(root));
    }
    for ca in cas {
        out.push_str(&ca.pem);
    }
    out
}

/// Write one output file whole ([`crate::replace`]) at mode 0644: agents in other containers,
/// under other UIDs, read it. Its folder is created when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::replace::replace(path, bytes, 0o644)
}

/// Write every output file for these CAs: the certificates alone, then the bundle.
pub fn write_all(settings: &Interception, roots: &[CertificateDer<'static>], cas: &[&PodCa]) -> Result<(), String> {
    let certs: String = cas.iter().map(|c| c.pem.as_str()).collect();
    let fail = |path: &Path, e: std::io::Error| format!("cannot write {}: {e}", path.display());
    write_atomic(&settings.ca_cert_out, certs.as_bytes()).map_err(|e| fail(&settings.ca_cert_out, e))?;
    write_atomic(&settings.ca_bundle_out, bundle(roots, cas).as_bytes())
        .map_err(|e| fail(&settings.ca_bundle_out, e))?;
    if let Some(path) = &settings.java_truststore_out {
        let mut all: Vec<CertificateDer<'static>> = roots.to_vec();
        all.extend(cas.iter().map(|c| c.cert.clone()));
        let store = super::truststore::pkcs12(&all).map_err(|e| format!("cannot build the Java trust store: {e}"))?;
        write_atomic(path, &store).map_err(|e| fail(path, e))?;
    }
    Ok(())
}
