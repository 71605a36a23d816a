//! Hex and SHA-256 fingerprints: the only form in which a secret or a certificate is ever named
//! in logs, audit events and the control API.

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// `sha256:` + the first 12 hex digits of the SHA-256 of a secret: enough to tell tokens apart,
/// never enough to recover one.
pub fn fingerprint(secret: &str) -> String {
    format!("sha256:{}", hex(&sha256(secret.as_bytes())[..6]))
}
