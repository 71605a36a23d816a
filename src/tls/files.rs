//! The files agents trust: the CA certificates alone, and the system's roots followed by them,
//! each written whole (temporary file, then rename) with mode 0644.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::ca::PodCa;
use crate::policy::Interception;

/// PEM of one certificate.
pub fn pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
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

/// Write `bytes` to `path` so a reader sees the old file or the new one, never a part: a
/// temporary file beside it (created 0644, synced), then a rename. The folder is created
/// when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut suffix = [0u8; 6];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| std::io::Error::other("no randomness"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        // The umask may have narrowed the mode: agents in other containers (other UIDs) read these.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

/// Parse a PEM bundle back into certificates (tests and `check` use it).
pub fn read_pem(text: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(text.as_bytes()).filter_map(Result::ok).collect()
}
