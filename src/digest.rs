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

/// An HMAC-SHA256 key for fingerprints of what agents send: keyed, because an agent's password,
/// unlike a token, can be guessed back from a plain hash.
pub struct Keyed(aws_lc_rs::hmac::Key);

impl Keyed {
    /// Least key length accepted from a file.
    pub const MIN_KEY_BYTES: usize = 16;

    /// A key from bytes (a fleet shares one, so fingerprints match across pods).
    pub fn new(key: &[u8]) -> Self {
        Keyed(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key))
    }

    /// A random key: fingerprints then match only within this process.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the system random source works");
        Keyed::new(&key)
    }

    /// `hmac:` + the first 12 hex digits of the HMAC-SHA256 of `value`.
    pub fn fingerprint(&self, value: &[u8]) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.0, value);
        format!("hmac:{}", hex(&tag.as_ref()[..6]))
    }
}

impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyed(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::Keyed;

    #[test]
    fn keyed_fingerprints_depend_on_key_and_value_only() {
        let (a, b) = (Keyed::new(b"0123456789abcdef"), Keyed::new(b"0123456789abcdeg"));
        let fp = a.fingerprint(b"sk-agent-1");
        assert!(fp.starts_with("hmac:") && fp.len() == 17, "{fp}");
        assert_eq!(fp, Keyed::new(b"0123456789abcdef").fingerprint(b"sk-agent-1"));
        assert_ne!(fp, a.fingerprint(b"sk-agent-2"));
        assert_ne!(fp, b.fingerprint(b"sk-agent-1"));
        assert_ne!(Keyed::random().fingerprint(b"x"), Keyed::random().fingerprint(b"x"));
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        assert_eq!(Keyed::new(b"Jefe").fingerprint(b"what do ya want for nothing?"), "hmac:5bdcc146bf60");
    }
}
