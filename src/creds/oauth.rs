//! The three OAuth 2.0 sources: client credentials (RFC 6749 §4.4), token exchange (RFC 8693)
//! and refresh token (RFC 6749 §6), with `client_secret_basic`, `client_secret_post` or
//! `private_key_jwt` (RFC 7523) client authentication, and RFC 7009 revocation.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use super::authority::{issued, post_form};
use super::refresher::CredCtx;
use super::scopes::Scopes;
use super::source::{FetchError, Fetched, Source};
use crate::clock::Clock;
use crate::outbound::TokenClient;
use crate::policy::{ClientAuth, Grant, OAuthSpec};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One OAuth credential: its settings, its HTTP client, and a rotated refresh token.
pub struct OAuth {
    spec: OAuthSpec,
    client: TokenClient,
    clock: Clock,
    /// The refresh token the server last returned (refresh grant), when it rotated it.
    refresh_token: Option<SecretString>,
    /// Whether "kept in memory only" was said already.
    warned: bool,
}

impl OAuth {
    /// For one credential.
    pub fn new(spec: &OAuthSpec, cx: &CredCtx) -> Self {
        OAuth {
            spec: spec.clone(),
            // TLS configuration (and the system roots) only when an endpoint is https.
            client: cx.upstreams.token_client(
                &spec.ca_certs,
                std::iter::once(&spec.token_url).chain(&spec.revocation_url).any(|u| u.scheme_str() == Some("https")),
            ),
            clock: cx.clock.clone(),
            refresh_token: None,
            warned: false,
        }
    }

    /// Write a rotated refresh token back to its file; when that cannot be done (a symlinked
    /// Secret mount, a read-only folder) keep it in memory, which a restart loses, and say so once.
    async fn keep_refresh_token(&mut self, path: &Path, token: &SecretString) {
        let (p, t) = (path.to_path_buf(), token.expose_secret().to_string());
        let r = tokio::task::spawn_blocking(move || super::writeback::write_back(&p, &t)).await;
        match r {
            Ok(Ok(())) => tracing::info!(file = %path.display(), "rotated refresh token written back"),
            Ok(Err(why)) if !self.warned => {
                self.warned = true;
                tracing::warn!(
                    file = %path.display(),
                    "rotated refresh token kept in memory only ({why}); a restart needs a fresh one. \
                     Give each instance its own refresh token: replicas sharing one break each other"
                );
            }
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("rotated refresh token kept in memory only"),
        }
    }

    /// Add client authentication to `form`; returns the Basic credentials when that is the method.
    async fn authenticate(
        &self,
        form: &mut Vec<(&'static str, String)>,
        endpoint: &http::Uri,
    ) -> Result<Option<SecretString>, FetchError> {
        let s = &self.spec;
        match &s.client_auth {
            ClientAuth::SecretBasic(f) => return Ok(Some(super::file::read_secret(f).await?)),
            ClientAuth::SecretPost(f) => {
                let secret = super::file::read_secret(f).await?;
                form.push(("client_id", s.client_id.clone()));
                form.push(("client_secret", secret.expose_secret().to_string()));
            }
            ClientAuth::PrivateKeyJwt { key_file, alg, kid } => {
                let aud = endpoint.to_string();
                let a =
                    super::jwt::client_assertion(key_file, *alg, kid.as_deref(), &s.client_id, &aud, self.clock.now())
                        .await?;
                form.push(("client_id", s.client_id.clone()));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION.into()));
                form.push(("client_assertion", a));
            }
            ClientAuth::None => form.push(("client_id", s.client_id.clone())),
        }
        Ok(None)
    }

    async fn post(
        &self,
        url: &http::Uri,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<super::authority::Answer, FetchError> {
        let basic = self.authenticate(&mut form, url).await?;
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let basic = basic.as_ref().map(|b| (self.spec.client_id.as_str(), b));
        post_form(&self.client, url, &pairs, basic, self.spec.timeout).await
    }
}

impl Source for OAuth {
    async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let s = &self.spec;
        let mut form: Vec<(&'static str, String)> = Vec::with_capacity(12);
        match &s.grant {
            Grant::ClientCredentials => form.push(("grant_type", "client_credentials".into())),
            Grant::TokenExchange { subject_token_file, subject_token_type, actor, requested_token_type } => {
                // Read at every exchange: the kubelet rotates a projected token in place.
                let subject = super::file::read_secret(subject_token_file).await?;
                form.push(("grant_type", TOKEN_EXCHANGE.into()));
                form.push(("subject_token", subject.expose_secret().to_string()));
                form.push(("subject_token_type", subject_token_type.clone()));
                if let Some((file, ty)) = actor {
                    let a = super::file::read_secret(file).await?;
                    form.push(("actor_token", a.expose_secret().to_string()));
                    form.push(("actor_token_type", ty.clone()));
                }
                form.push(("requested_token_type", requested_token_type.clone()));
            }
            Grant::RefreshToken { refresh_token_file } => {
                let rt = match &self.refresh_token {
                    Some(rt) => rt.clone(),
                    None => super::file::read_secret(refresh_token_file).await?,
                };
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", rt.expose_secret().to_string()));
            }
        }
        if !s.scopes.is_empty() {
            form.push(("scope", s.scopes.join(" ")));
        }
        if let Some(a) = &s.audience {
            form.push(("audience", a.clone()));
        }
        for r in &s.resource {
            form.push(("resource", r.clone()));
        }
        let answer = self.post(&s.token_url, form).await?;
        let got = issued(&answer, self.clock.now())?;
        let scopes = Scopes::of(&s.scopes, got.scope.as_deref(), got.access_token.expose_secret());
        // Cloned: the refresh arm needs `self` mutably (rotation time, not the request path).
        match &self.spec.grant.clone() {
            Grant::TokenExchange { requested_token_type, .. } => {
                if got.issued_token_type.as_deref() != Some(requested_token_type) {
                    return Err(FetchError::new(
                        "invalid_response",
                        "issued_token_type is missing or not the requested_token_type",
                    ));
                }
            }
            Grant::RefreshToken { refresh_token_file } => {
                if let Some(new) = got.refresh_token {
                    self.keep_refresh_token(refresh_token_file, &new).await;
                    self.refresh_token = Some(new);
                }
            }
            Grant::ClientCredentials => {}
        }
        Ok(Fetched { scopes: Some(scopes), ..Fetched::new(got.access_token, got.expiry) })
    }

    async fn revoke(&mut self, token: &super::Token) -> Result<(), FetchError> {
        let Some(url) = self.spec.revocation_url.clone() else { return Ok(()) };
        let form =
            vec![("token", token.secret().expose_secret().to_string()), ("token_type_hint", "access_token".into())];
        let a = self.post(&url, form).await?;
        // RFC 7009 §2.2: 200 whether or not the token was known.
        if a.status.is_success() {
            Ok(())
        } else {
            Err(FetchError::new("invalid_response", format!("revocation answered status {}", a.status.as_u16())))
        }
    }
}
