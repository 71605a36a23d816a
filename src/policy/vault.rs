//! The validated settings of a `vault` credential: where Vault is, how the pod logs in, and what
//! is read.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::creds::Lifetime;

/// A secret read from Vault (or OpenBao) with a login of the pod's own.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultSpec {
    /// The login; tools whose logins are equal share one Vault token.
    pub login: VaultLogin,
    /// The path read, without `/v1/` (`identity/oidc/token/ROLE`, `secret/data/…`, `database/creds/…`).
    pub path: String,
    /// What the path is, from its shape.
    pub kind: VaultKind,
    /// The field injected, or two (`username`, `password`) for `inject.basic: {}`.
    pub fields: Vec<String>,
    /// Lifetime bounds.
    pub life: Lifetime,
}

/// What a Vault path returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultKind {
    /// `identity/oidc/token/ROLE`: a JWT Vault signs, with the role's TTL.
    Identity,
    /// KV version 2 (`MOUNT/data/…`): re-read every `refresh_interval`, new when the version changes.
    Kv {
        /// How often the path is read again.
        refresh_interval: Duration,
    },
    /// Any other path: a dynamic secret, usually with a lease that is renewed and revoked.
    Lease,
}

/// How the pod logs in to Vault; equal values share one login (one Vault token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VaultLogin {
    /// `https://vault:8200` (`http` only to loopback).
    pub addr: http::Uri,
    /// `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Extra CA certificates for Vault's TLS.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// Time allowed for one Vault request.
    pub timeout: Duration,
    /// The method and its inputs.
    pub method: LoginMethod,
}

/// A Vault auth method. `Debug` leaves the role id out (it is never shown).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum LoginMethod {
    /// `auth/MOUNT/login` with `role` and a JWT read from a file.
    Jwt {
        /// The auth mount (default `jwt`).
        mount: String,
        /// The role.
        role: String,
        /// The JWT's file (a projected ServiceAccount token), read at every login.
        jwt_file: PathBuf,
    },
    /// `auth/MOUNT/login` (default mount `kubernetes`) with `role` and the ServiceAccount token.
    Kubernetes {
        /// The auth mount.
        mount: String,
        /// The role.
        role: String,
        /// The ServiceAccount token's file.
        jwt_file: PathBuf,
    },
    /// `auth/MOUNT/login` (default mount `approle`) with `role_id` and a secret id from a file.
    AppRole {
        /// The auth mount.
        mount: String,
        /// The role's name, for labels only (the role id is kept out of them).
        role: Option<String>,
        /// The role id (sent, never shown).
        role_id: String,
        /// The secret id's file, read at every login.
        secret_id_file: PathBuf,
    },
    /// A Vault token from a file, re-read when the file changes.
    Token {
        /// The token's file.
        token_file: PathBuf,
    },
}

impl std::fmt::Debug for LoginMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginMethod::Jwt { mount, role, jwt_file } | LoginMethod::Kubernetes { mount, role, jwt_file } => f
                .debug_struct(self.name())
                .field("mount", mount)
                .field("role", role)
                .field("jwt_file", jwt_file)
                .finish(),
            LoginMethod::AppRole { mount, role, secret_id_file, .. } => f
                .debug_struct("approle")
                .field("mount", mount)
                .field("role", role)
                .field("secret_id_file", secret_id_file)
                .finish_non_exhaustive(),
            LoginMethod::Token { token_file } => f.debug_struct("token").field("token_file", token_file).finish(),
        }
    }
}

impl LoginMethod {
    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            LoginMethod::Jwt { .. } => "jwt",
            LoginMethod::Kubernetes { .. } => "kubernetes",
            LoginMethod::AppRole { .. } => "approle",
            LoginMethod::Token { .. } => "token",
        }
    }
}

impl VaultLogin {
    /// The login's name in metrics, status and audit: `METHOD:MOUNT/ROLE` (`approle:MOUNT` without
    /// a `role` name: the role id is never shown), or `token`.
    pub fn label(&self) -> String {
        match &self.method {
            LoginMethod::Jwt { mount, role, .. } | LoginMethod::Kubernetes { mount, role, .. } => {
                format!("{}:{mount}/{role}", self.method.name())
            }
            LoginMethod::AppRole { mount, role: Some(role), .. } => format!("approle:{mount}/{role}"),
            LoginMethod::AppRole { mount, role: None, .. } => format!("approle:{mount}"),
            LoginMethod::Token { .. } => "token".into(),
        }
    }
}

/// A client certificate from Vault's PKI engine, presented by the tool's upstream TLS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertSpec {
    /// The login (shared with credentials whose login settings are equal).
    pub login: VaultLogin,
    /// `MOUNT/issue/ROLE`.
    pub path: String,
    /// The certificate's common name.
    pub common_name: String,
    /// The lifetime asked for.
    pub ttl: Duration,
}
