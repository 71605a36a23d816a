//! The validated credential settings of a tool: which source, and the lifecycle bounds they share.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

pub use super::vault::{ClientCertSpec, LoginMethod, VaultKind, VaultLogin, VaultSpec};

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialSpec {
    /// A file, re-read when it changes.
    File {
        /// The file's path.
        path: PathBuf,
    },
    /// An environment variable of the proxy, read once.
    Env {
        /// The variable's name.
        var: String,
    },
    /// One of the three OAuth 2.0 grants.
    OAuth(Box<OAuthSpec>),
    /// A self-signed JWT.
    Jwt(Box<JwtSpec>),
    /// A credential helper command.
    Exec(Box<ExecSpec>),
    /// A secret read from Vault or OpenBao after a login.
    Vault(Box<VaultSpec>),
}

impl CredentialSpec {
    /// The `source` name as written in the policy.
    pub fn source(&self) -> &'static str {
        match self {
            CredentialSpec::File { .. } => "file",
            CredentialSpec::Env { .. } => "env",
            CredentialSpec::OAuth(o) => match o.grant {
                Grant::ClientCredentials => "oauth2_client_credentials",
                Grant::TokenExchange { .. } => "oauth2_token_exchange",
                Grant::RefreshToken { .. } => "oauth2_refresh_token",
            },
            CredentialSpec::Jwt(_) => "jwt",
            CredentialSpec::Exec(_) => "exec",
            CredentialSpec::Vault(_) => "vault",
        }
    }

    /// The lifecycle bounds of a rotating source (`None` for `file` and `env`).
    pub fn lifetime(&self) -> Option<&Lifetime> {
        match self {
            CredentialSpec::File { .. } | CredentialSpec::Env { .. } => None,
            CredentialSpec::OAuth(o) => Some(&o.life),
            CredentialSpec::Jwt(j) => Some(&j.life),
            CredentialSpec::Exec(e) => Some(&e.life),
            CredentialSpec::Vault(v) => Some(&v.life),
        }
    }
}

/// Lifetime bounds shared by the rotating sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Assumed when the authority states no lifetime.
    pub default_ttl: Duration,
    /// Longer stated lifetimes are clamped to this.
    pub max_ttl: Duration,
    /// Stop injecting this long before expiry (further capped at a tenth of the lifetime).
    pub expiry_margin: Duration,
    /// Revoke at the authority on shutdown.
    pub revoke_on_shutdown: bool,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(24 * 3600),
            expiry_margin: Duration::from_secs(5),
            revoke_on_shutdown: false,
        }
    }
}

/// When a rotating credential is refreshed: at `at` of its lifetime, ± `jitter` of its lifetime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refresh {
    /// Fraction of the lifetime, in (0, 1).
    pub at: f64,
    /// Fraction of the lifetime added or taken at random.
    pub jitter: f64,
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh { at: 0.5, jitter: 0.1 }
    }
}

/// An OAuth 2.0 token source.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthSpec {
    /// Which grant.
    pub grant: Grant,
    /// The token endpoint.
    pub token_url: http::Uri,
    /// The client's identifier.
    pub client_id: String,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// The `audience` parameter.
    pub audience: Option<String>,
    /// RFC 8707 resource indicators.
    pub resource: Vec<String>,
    /// RFC 7009 revocation endpoint.
    pub revocation_url: Option<http::Uri>,
    /// Extra CA certificates for the authority.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// Time allowed for one token request.
    pub timeout: Duration,
    /// Lifetime bounds.
    pub life: Lifetime,
}

/// The OAuth 2.0 grant and its own inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 8693.
    TokenExchange {
        /// Read at every exchange.
        subject_token_file: PathBuf,
        /// Its token type URI.
        subject_token_type: String,
        /// An actor token's file and type.
        actor: Option<(PathBuf, String)>,
        /// Asked for, and required of the answer's `issued_token_type`.
        requested_token_type: String,
    },
    /// RFC 6749 §6.
    RefreshToken {
        /// The refresh token's file (written back when the server rotates it).
        refresh_token_file: PathBuf,
    },
}

/// How an OAuth client authenticates to the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the secret read from this file.
    SecretBasic(PathBuf),
    /// `client_id` + `client_secret` in the form body.
    SecretPost(PathBuf),
    /// RFC 7523 client assertion signed with a key file.
    PrivateKeyJwt {
        /// PEM private key.
        key_file: PathBuf,
        /// Signing algorithm.
        alg: SignAlg,
        /// `kid` header.
        kid: Option<String>,
    },
    /// A public client: `client_id` only.
    None,
}

/// JWT signing algorithms credproxy signs with (never `none`, never HMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl SignAlg {
    /// Parse the policy spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(SignAlg::RS256),
            "ES256" => Some(SignAlg::ES256),
            "EdDSA" => Some(SignAlg::EdDSA),
            _ => None,
        }
    }
}

/// A JWT credproxy signs itself.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSpec {
    /// PEM private key, read at every signing.
    pub key_file: PathBuf,
    /// Algorithm.
    pub alg: SignAlg,
    /// `kid` header.
    pub kid: String,
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`.
    pub audience: String,
    /// `scope` (space-separated).
    pub scopes: Vec<String>,
    /// Lifetime of each token.
    pub ttl: Duration,
    /// Lifetime bounds.
    pub life: Lifetime,
}

/// A credential helper command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// The helper's whole environment besides `PATH`, `HOME` and `TMPDIR`.
    pub env: std::collections::BTreeMap<String, String>,
    /// Time allowed for one run.
    pub timeout: Duration,
    /// Lifetime bounds.
    pub life: Lifetime,
}
