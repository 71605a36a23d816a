//! The `jwt` source (a token credproxy signs itself) and the RFC 7523 client assertion that
//! `private_key_jwt` client authentication sends. RS256, ES256 and EdDSA only: never `none`,
//! never a shared-secret algorithm.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
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
    super::hex(&b)
}

fn unix(t: SystemTime) -> u64 {
    crate::clock::unix(t).as_secs()
}

/// Sign `claims` with the PEM private key `pem` (PKCS#8; PKCS#1 for RSA too).
pub fn sign(alg: SignAlg, pem: &SecretString, kid: Option<&str>, claims: &Value) -> Result<String, FetchError> {
    let der = PrivateKeyDer::from_pem_slice(pem.expose_secret().as_bytes())
        .map_err(|_| FetchError::local(format!("the key file is not a PEM {alg:?} private key")))?;
    sign_der(alg, &der, kid, claims)
}

/// Sign `claims` as a JWS compact serialisation (header `alg`, `typ: JWT`, `kid`) with aws-lc-rs
/// directly: three algorithms need no JWT library, and its PEM support would pull in an ASN.1
/// stack and a bignum crate that rustls-pki-types already covers.
pub fn sign_der(
    alg: SignAlg,
    der: &PrivateKeyDer<'_>,
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, FetchError> {
    use aws_lc_rs::signature as sig;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let name = match alg {
        SignAlg::RS256 => "RS256",
        SignAlg::ES256 => "ES256",
        SignAlg::EdDSA => "EdDSA",
    };
    let mut header = json!({"alg": name, "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = Value::String(k.to_string());
    }
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let bad = || FetchError::local(format!("the key is not a {name} private key"));
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let raw = der.secret_der();
    let signature = match (alg, der) {
        (SignAlg::RS256, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Pkcs1(_)) => {
            let kp = match der {
                PrivateKeyDer::Pkcs8(_) => sig::RsaKeyPair::from_pkcs8(raw),
                _ => sig::RsaKeyPair::from_der(raw),
            }
            .map_err(|_| bad())?;
            let mut out = vec![0; kp.public_modulus_len()];
            kp.sign(&sig::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out).map_err(|_| bad())?;
            out
        }
        (SignAlg::ES256, PrivateKeyDer::Pkcs8(_)) => {
            let kp = sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, raw).map_err(|_| bad())?;
            kp.sign(&rng, input.as_bytes()).map_err(|_| bad())?.as_ref().to_vec()
        }
        (SignAlg::EdDSA, PrivateKeyDer::Pkcs8(_)) => {
            let kp = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(raw).map_err(|_| bad())?;
            kp.sign(input.as_bytes()).as_ref().to_vec()
        }
        _ => return Err(bad()),
    };
    Ok(format!("{input}.{}", b64(&signature)))
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
        Ok(Fetched::new(SecretString::from(token), expiry))
    }
}
