//! The policy file (version 1) as written: serde structs, `deny_unknown_fields` everywhere.
//!
//! This file is the reference for the policy format: every field carries a `///` doc, and the
//! README's policy reference is kept in step with it. Values are checked, `${VAR}`-expanded and
//! turned into a [`crate::policy::Policy`] by [`validate`].

pub mod lint;
pub mod validate;
pub mod watch;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use validate::{load_file, load_text, parse, parse_with, ConfigError, ConfigErrors, Overrides};

/// The whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Format version; must be `1`.
    pub version: u32,
    /// `enforce` (the default): requests no route allows are refused. `report`: they are forwarded
    /// with the agent's own credentials, untouched, and recorded as `request.would_deny` (for
    /// adopting credproxy in front of a running agent). Changeable by reload.
    pub mode: Option<String>,
    /// Listener addresses.
    #[serde(default)]
    pub listen: RawListen,
    /// Identifies this instance in audit events and the control API.
    /// Default: the host name plus a random suffix.
    pub instance_id: Option<String>,
    /// TLS interception of CONNECT by a pod-local CA; off without this block (and without `run --ca-dir`).
    #[serde(default)]
    pub interception: Option<RawInterception>,
    /// Audit event output.
    #[serde(default)]
    pub audit: RawAudit,
    /// Host name overrides, like curl's `--resolve`: `name` or `*.suffix` to an IP address.
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
    /// Timeouts and size limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Tools by name (`^[a-z][a-z0-9-]{0,62}$`).
    #[serde(default)]
    pub tools: BTreeMap<String, RawTool>,
}

/// `listen:` — the three listeners.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// Where agents connect. Default `127.0.0.1:15001`. Must be loopback unless `proxy_auth_file` is set.
    pub proxy: Option<String>,
    /// A file whose contents agents present in `Proxy-Authorization` (Basic password or Bearer).
    pub proxy_auth_file: Option<String>,
    /// `GET /metrics /live /ready`. Default `127.0.0.1:15090`; safe to expose to Prometheus.
    pub admin: Option<String>,
    /// Credential status, rotate, revoke and the policy in force. `unix:PATH` (default
    /// `unix:/run/credproxy-control/control.sock`: a 0600 socket in a 0700 folder of its own, which
    /// the agent's container never mounts) or a TCP `IP:port`: on loopback (with a warning unless
    /// `control_auth_file` is set: in a pod the agent shares loopback), off loopback only with
    /// `control_auth_file`.
    pub control: Option<String>,
    /// A file whose contents callers of the control API present as `Authorization: Bearer`.
    pub control_auth_file: Option<String>,
}

/// `interception:` — the pod-local CA that signs leaf certificates for intercepted CONNECT hosts.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterception {
    /// The CA certificate alone, PEM (for `NODE_EXTRA_CA_CERTS`). Required.
    pub ca_cert_out: Option<String>,
    /// The system's roots followed by the CA, PEM (for `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
    /// `CURL_CA_BUNDLE`). Required.
    pub ca_bundle_out: Option<String>,
    /// The same roots as a PKCS12 trust store, password `changeit`, for Java. Optional.
    pub java_truststore_out: Option<String>,
    /// How long the CA is valid. Default `365d`; between `1d` and `3650d`.
    pub ca_validity: Option<String>,
    /// Most leaf certificates kept (one per intercepted host). Default 1000.
    pub leaf_cache_size: Option<u64>,
}

/// `audit:` — audit events, one JSON object per line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `stdout` (the default) or a file path appended to.
    pub output: Option<String>,
    /// Which requests are audited: `all`, `denied` (the default) or `none`.
    pub requests: Option<String>,
    /// A file holding the key (at least 16 bytes) of the HMAC-SHA256 fingerprints given to the
    /// credentials agents send; share it across a fleet so fingerprints match between pods.
    /// Default: a random key per process (fingerprints then match only within one run).
    pub fingerprint_key_file: Option<String>,
    /// Query parameters that carry agent credentials (`api_key`, `key`), fingerprinted in
    /// request events by name.
    #[serde(default)]
    pub credential_query_params: Vec<String>,
    /// Cookies that carry agent credentials (`session`), fingerprinted in request events by name.
    #[serde(default)]
    pub credential_cookies: Vec<String>,
}

/// `limits:` — durations are humantime strings (`10s`, `5m`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time to read a request's headers. Default `10s`.
    pub header_read_timeout: Option<String>,
    /// Largest request head in bytes, room for the injected header included. Default 65536.
    pub max_header_bytes: Option<u64>,
    /// Most request header fields. Default 100.
    pub max_headers: Option<u64>,
    /// Time to connect to an upstream (TCP and TLS). Default `5s`.
    pub connect_timeout: Option<String>,
    /// Time to the upstream's response head; a streamed body may then run on. Default `60s`.
    pub response_header_timeout: Option<String>,
    /// Idle time of pooled upstream connections. Default `90s`. (An idle agent connection is closed
    /// after `header_read_timeout`: hyper's header timer also covers the wait for the next request.)
    pub idle_timeout: Option<String>,
    /// Concurrent agent connections; above it new ones are shed and counted. Default 1024.
    pub max_connections: Option<u64>,
}

/// `tools.NAME:` — one tool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// Where the token comes from. Without it, matching requests pass through untouched.
    pub credential: Option<RawCredential>,
    /// Whether `/ready` waits for this tool's credential. Default `true`.
    pub required: Option<bool>,
    /// When a rotating credential is refreshed. Default `{ at: 0.5, jitter: 0.1 }`.
    pub refresh: Option<RawRefresh>,
    /// How the token is attached. Default `{ header: Authorization, value: "Bearer {token}" }`.
    pub inject: Option<RawInject>,
    /// More request headers to remove before injecting (besides the built-in list).
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// RFC 3339 instant: tokens issued earlier are revoked. Must not be in the future.
    pub not_before: Option<String>,
    /// Permit a credential on `http` routes to non-loopback hosts. Default `false`.
    #[serde(default)]
    pub allow_insecure_upstream: bool,
    /// The agent must name this tool in `Credproxy-Tool` (for tools sharing a host). Default `false`.
    #[serde(default)]
    pub selected_by_header: bool,
    /// Base-URL mode: requests to `/NAME/...` go to this URL plus the rest of the path.
    pub upstream: Option<String>,
    /// A PEM file of CA certificates trusted (besides the system roots) for this tool's upstreams.
    pub ca_file: Option<String>,
    /// A client certificate the tool's upstream TLS client presents (mTLS), from Vault's PKI
    /// engine; beside any credential, or alone.
    pub client_certificate: Option<RawClientCert>,
    /// Where the tool may go; at least one.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `credential:` — the token source, selected by `source`.
#[derive(Debug, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCredential {
    /// A file (a mounted Secret), re-read when it changes; one trailing newline is trimmed.
    File {
        /// The file's path.
        path: String,
    },
    /// An environment variable of the proxy, read at start.
    Env {
        /// The variable's name.
        var: String,
    },
    /// RFC 6749 §4.4 client credentials grant.
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials(RawOAuth),
    /// RFC 8693 token exchange of a subject token read from a file.
    #[serde(rename = "oauth2_token_exchange")]
    OAuth2TokenExchange(RawOAuth),
    /// RFC 6749 §6 refresh token grant, the refresh token read from a file.
    #[serde(rename = "oauth2_refresh_token")]
    OAuth2RefreshToken(RawOAuth),
    /// A JWT credproxy signs itself.
    Jwt(RawJwt),
    /// A credential helper command printing `{"token": ..., "expires_at"|"expires_in": ...}`.
    Exec(RawExec),
    /// Vault or OpenBao: log in, read a path, pick a field; renew the lease, revoke it.
    Vault(RawVault),
}

// `default_ttl`, `max_ttl` and `expiry_margin` repeat in the rotating sources' structs: serde
// cannot `flatten` a shared struct under `deny_unknown_fields`. `validate` reads them through
// one function (`semantic::credential::lifetime`).

/// The fields of the three `oauth2_*` sources (each names which grants accept it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    /// The token endpoint; `https` unless the host is loopback.
    pub token_url: String,
    /// The client's identifier.
    pub client_id: String,
    /// A file holding the client secret (`client_secret_basic` and `client_secret_post`).
    pub client_secret_file: Option<String>,
    /// `client_secret_basic` (the default with a secret), `client_secret_post` or `private_key_jwt`.
    pub client_auth: Option<String>,
    /// `private_key_jwt`: the PEM private key that signs the client assertion.
    pub client_key_file: Option<String>,
    /// `private_key_jwt`: `RS256`, `ES256` (the default) or `EdDSA`.
    pub client_key_alg: Option<String>,
    /// `private_key_jwt`: the `kid` put in the assertion's header.
    pub client_key_id: Option<String>,
    /// Requested scopes, sent space-separated as `scope`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The `audience` parameter.
    pub audience: Option<String>,
    /// RFC 8707 resource indicators, one `resource` parameter each.
    #[serde(default)]
    pub resource: Vec<String>,
    /// `oauth2_token_exchange`: the subject token's file, read at every exchange.
    pub subject_token_file: Option<String>,
    /// `oauth2_token_exchange`: the subject token's type. Default `urn:ietf:params:oauth:token-type:jwt`.
    pub subject_token_type: Option<String>,
    /// `oauth2_token_exchange`: an actor token's file (optional).
    pub actor_token_file: Option<String>,
    /// `oauth2_token_exchange`: the actor token's type. Default `urn:ietf:params:oauth:token-type:jwt`.
    pub actor_token_type: Option<String>,
    /// `oauth2_token_exchange`: the token type asked for, and required of the answer's
    /// `issued_token_type`. Default `urn:ietf:params:oauth:token-type:access_token`.
    pub requested_token_type: Option<String>,
    /// `oauth2_refresh_token`: the refresh token's file; a rotated one is written back when writable.
    pub refresh_token_file: Option<String>,
    /// RFC 7009 revocation endpoint, called when a token is revoked.
    pub revocation_url: Option<String>,
    /// A PEM file of CA certificates trusted (besides the system roots) for the token endpoint.
    pub ca_file: Option<String>,
    /// Time allowed for one token request, connect included. Default `10s`.
    pub timeout: Option<String>,
    /// Lifetime assumed when the answer states none (no `expires_in`, not a JWT). Default `5m`.
    pub default_ttl: Option<String>,
    /// Longer stated lifetimes are clamped to this. Default `24h`.
    pub max_ttl: Option<String>,
    /// A token is no longer injected this long before its expiry. Default `5s`, and never more
    /// than a tenth of the token's lifetime.
    pub expiry_margin: Option<String>,
    /// Revoke the token at the authority on shutdown (needs `revocation_url`). Default `false`.
    #[serde(default)]
    pub revoke_on_shutdown: bool,
}

/// `source: jwt` — a JWT signed by credproxy with a key file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// PEM private key (PKCS#8; RSA, P-256 or Ed25519), read at every signing.
    pub key_file: String,
    /// `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// The `kid` header.
    pub kid: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The `sub` claim.
    pub subject: String,
    /// The `aud` claim.
    pub audience: String,
    /// The `scope` claim, space-separated (omitted when empty).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The token's lifetime (`exp` - now). Default `5m`.
    pub ttl: Option<String>,
    /// A token is no longer injected this long before its expiry (see the OAuth sources).
    pub expiry_margin: Option<String>,
}

/// `source: exec` — a credential helper.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    /// The program and its arguments (run directly, no shell).
    pub command: Vec<String>,
    /// The helper's environment: it starts with only `PATH`, `HOME` and `TMPDIR` from credproxy's
    /// (never other tools' secrets), plus these variables (`${VAR}` expands).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Time allowed for one run; it is killed after. Default `10s`.
    pub timeout: Option<String>,
    /// Lifetime assumed when the helper prints no expiry. Default `5m`.
    pub default_ttl: Option<String>,
    /// Longer lifetimes are clamped to this. Default `24h`.
    pub max_ttl: Option<String>,
    /// A token is no longer injected this long before its expiry (see the OAuth sources).
    pub expiry_margin: Option<String>,
}

/// `source: vault` — a secret read from Vault (or OpenBao) with a login of the pod's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVault {
    /// Vault's address, `https://vault.example:8200` (`http` only to a loopback host).
    pub addr: String,
    /// Sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// A PEM file of CA certificates trusted (besides the system roots) for Vault.
    pub ca_file: Option<String>,
    /// How this pod logs in; tools whose logins are identical share one Vault token.
    pub login: RawVaultLogin,
    /// What is read: `identity/oidc/token/ROLE` (a JWT Vault signs), KV version 2
    /// (`MOUNT/data/PATH`), or any secrets engine path that returns a lease (`database/creds/ROLE`).
    pub path: String,
    /// The field of the answer's `data` injected. Default `token` for identity tokens; else
    /// this or `fields` is required.
    pub field: Option<String>,
    /// Two fields, username then password, for `inject.basic: {}`.
    pub fields: Option<Vec<String>>,
    /// KV version 2 only: how often the path is read again (a new version is used). Default `60s`.
    pub refresh_interval: Option<String>,
    /// Time allowed for one Vault request, connect included. Default `10s`.
    pub timeout: Option<String>,
    /// Lifetime assumed when Vault states none. Default `5m`.
    pub default_ttl: Option<String>,
    /// Longer stated lifetimes are clamped to this. Default `24h`.
    pub max_ttl: Option<String>,
    /// A secret is no longer injected this long before its expiry (see the OAuth sources).
    pub expiry_margin: Option<String>,
    /// On shutdown, revoke the lease (`sys/leases/revoke`), and the Vault token when every tool
    /// using the login sets this too. Default `false`.
    #[serde(default)]
    pub revoke_on_shutdown: bool,
}

/// `login:` of a `vault` credential, selected by `method`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultLogin {
    /// `jwt`, `kubernetes`, `approle` or `token`.
    pub method: String,
    /// The auth mount. Default: the method's name (`jwt`, `kubernetes`, `approle`).
    pub mount: Option<String>,
    /// `jwt` and `kubernetes`: the role logged in as. Required. `approle`: the role's name, used
    /// only to name the login in metrics and status (the role id never is).
    pub role: Option<String>,
    /// `jwt`: the JWT's file (a projected ServiceAccount token), read at every login. Required.
    /// `kubernetes`: default `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub jwt_file: Option<String>,
    /// `approle`: the role id. Required.
    pub role_id: Option<String>,
    /// `approle`: the secret id's file, read at every login. Required.
    pub secret_id_file: Option<String>,
    /// `token`: a file holding a Vault token, read again when it changes. Required.
    pub token_file: Option<String>,
}

/// `client_certificate:` — a short-lived certificate and key from Vault's PKI engine, rotated like
/// a token: new connections present the new one. Its Vault fields repeat `RawVault`'s: serde
/// cannot `flatten` a shared struct under `deny_unknown_fields`; `validate` reads both through one
/// function (`semantic::vault::vault_login`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCert {
    /// `vault`, the one source of client certificates.
    pub source: String,
    /// Vault's address (as for a `vault` credential; the same login settings share one login).
    pub addr: String,
    /// Sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// A PEM file of CA certificates trusted for Vault.
    pub ca_file: Option<String>,
    /// How this pod logs in (as for a `vault` credential).
    pub login: RawVaultLogin,
    /// The PKI role's issue path, `MOUNT/issue/ROLE`.
    pub path: String,
    /// The certificate's common name (the role must allow it).
    pub common_name: String,
    /// The lifetime asked for. Default `1h`.
    pub ttl: Option<String>,
    /// Time allowed for one Vault request. Default `10s`.
    pub timeout: Option<String>,
}

/// `refresh:` — when a rotating credential is refreshed: at `at` of its lifetime, plus or
/// minus `jitter` of its lifetime.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRefresh {
    /// Fraction of the lifetime, in (0, 1). Default `0.5`.
    pub at: Option<f64>,
    /// Fraction of the lifetime added or taken at random, so a fleet spreads out. Default `0.1`.
    pub jitter: Option<f64>,
}

/// `inject:` — exactly one of `header` (with `value`), `query` or `basic`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInject {
    /// Header name. Default `Authorization`.
    pub header: Option<String>,
    /// Header value with exactly one `{token}`. Default `Bearer {token}` for `Authorization`,
    /// else `{token}`.
    pub value: Option<String>,
    /// Put the token in a query parameter.
    pub query: Option<RawQueryInject>,
    /// HTTP Basic authentication with the token as password.
    pub basic: Option<RawBasicInject>,
}

/// `inject.query:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryInject {
    /// The parameter's name; an agent's parameter of that name is removed.
    pub param: String,
}

/// `inject.basic:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicInject {
    /// The username sent with the token as password.
    pub username: Option<String>,
}

/// `routes[i]:` — one allowed destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `https` (the default) or `http`.
    pub scheme: Option<String>,
    /// Exact host or `*.example.com` (any subdomain, not the apex); case-insensitive.
    pub host: String,
    /// Port. Default: the scheme's.
    pub port: Option<u16>,
    /// Allowed methods. Default: all.
    pub methods: Option<Vec<String>>,
    /// Path globs on the normalised path: `*` one segment (or part of one), `**` any depth.
    /// Default: all paths.
    pub paths: Option<Vec<String>>,
    /// Allow loopback, private and link-local addresses (credproxy's own listeners stay refused:
    /// `508 loop_detected`). Default `false`.
    #[serde(default)]
    pub allow_private: bool,
}
