//! The `jwt` source (a token credproxy signs itself) and the RFC 7523 client assertion that
//! `private_key_jwt` client authentication sends. RS256, ES256 and EdDSA only: never `none`,
//! never a shared-secret algorithm.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::source::{Expiry, FetchError, Fetched, Source};
use crate::clock::Clock;
use crate::policy::{JwtSpec, SignAlg};

/// `iat` and `nbf` are set this far in the past, for verifiers whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(30);
/// Lifetime of a client assertion.
const ASSERTION_TTL: Duration = Duration::from_secs(60);

/// A unique `jti`: 128 random bits, hex.
pub fn jti() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("the system RNG works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Sign `claims` with the PEM key `pem` (PKCS#8).
pub fn sign(alg: SignAlg, pem: &SecretString, kid: Option<&str>, claims: &Value) -> Result<String, FetchError> {
    // One provider is compiled in; installing it explicitly keeps jsonwebtoken from guessing.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let pem = pem.expose_secret().as_bytes();
    let bad = |_| FetchError::local(format!("the key file is not a PEM {alg:?} private key"));
    let (key, alg) = match alg {
        SignAlg::RS256 => (EncodingKey::from_rsa_pem(pem).map_err(bad)?, Algorithm::RS256),
        SignAlg::ES256 => (EncodingKey::from_ec_pem(pem).map_err(bad)?, Algorithm::ES256),
        SignAlg::EdDSA => (EncodingKey::from_ed_pem(pem).map_err(bad)?, Algorithm::EdDSA),
    };
    let mut header = Header::new(alg);
    header.typ = Some("JWT".into());
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key)
        .map_err(|_| FetchError::local("signing failed (does the key match the algorithm?)"))
}

/// An RFC 7523 §3 client assertion for `client_id` at `audience` (the token endpoint).
pub async fn client_assertion(
    key_file: &std::path::Path,
    alg: SignAlg,
    kid: Option<&str>,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<String, FetchError> {
    let pem = super::file::read_secret(key_file).await?;
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": audience, "jti": jti(),
        "iat": unix(now - BACKDATE), "exp": unix(now + ASSERTION_TTL),
    });
    sign(alg, &pem, kid, &claims)
}

/// The `jwt` source.
pub struct JwtSource {
    spec: JwtSpec,
    clock: Clock,
}

impl JwtSource {
    /// For one credential.
    pub fn new(spec: &JwtSpec, clock: Clock) -> Self {
        JwtSource { spec: spec.clone(), clock }
    }
}

impl Source for JwtSource {
    async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let s = &self.spec;
        // Read at every signing, so a rotated key file is picked up.
        let pem = super::file::read_secret(&s.key_file).await?;
        let now = self.clock.now();
        let exp = unix(now + s.ttl);
        let mut claims = json!({
            "iss": s.issuer, "sub": s.subject, "aud": s.audience, "jti": jti(),
            "iat": unix(now - BACKDATE), "nbf": unix(now - BACKDATE), "exp": exp,
        });
        if !s.scopes.is_empty() {
            claims["scope"] = Value::String(s.scopes.join(" "));
        }
        let token = sign(s.alg, &pem, Some(&s.kid), &claims)?;
        // `exp` is whole seconds: schedule from it, not from `ttl`, so credproxy never outlives it.
        let expiry = Expiry::At(UNIX_EPOCH + Duration::from_secs(exp));
        Ok(Fetched { secret: SecretString::from(token), expiry, lease_id: None })
    }
}
