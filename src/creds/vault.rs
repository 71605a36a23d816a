//! The `vault` source: a secret read from Vault (or OpenBao) with the pod's own login — an
//! identity token, a KV version 2 value, or a dynamic secret whose lease is renewed at
//! `refresh.at` of its duration, replaced near its max TTL, and revoked when asked.

pub mod client;
pub mod login;
pub mod pki;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::refresher::CredCtx;
use super::source::{Expiry, FetchError, FetchKind, Fetched, Source};
use super::Token;
use crate::policy::{Refresh, VaultKind, VaultSpec};
use login::{Login, VaultToken};

/// The lease of the dynamic secret in use.
struct Lease {
    id: String,
    secret: SecretString,
    issued_at: SystemTime,
    /// The duration it was issued with (asked for again at each renewal).
    duration: Duration,
    renewable: bool,
    /// A renewal granted less than asked: the max TTL is near, so the next fetch reads anew.
    capped: bool,
    /// The Vault token that created it (a lease ends with its token) and that token's end once no
    /// renewal can extend it.
    token: String,
    token_end: Option<SystemTime>,
    /// When it ends, as last granted.
    end: SystemTime,
}

/// One tool's Vault secret.
pub struct VaultSource {
    spec: VaultSpec,
    login: Arc<Login>,
    cx: CredCtx,
    refresh: Refresh,
    lease: Option<Lease>,
    /// Leases this source read and replaced, with their ends: still valid upstream until then,
    /// and revoked with the current one (revoke, shutdown).
    superseded: Vec<(String, SystemTime)>,
    kv_version: Option<u64>,
    /// The token a revocation uses, taken when the source was made for one.
    revoke_with: Option<Arc<VaultToken>>,
}

impl VaultSource {
    /// For one credential; its login is shared with every tool whose login settings are equal.
    pub fn new(spec: &VaultSpec, refresh: Refresh, cx: &CredCtx) -> Self {
        let login = cx.logins.get(&spec.login);
        login.wake_on_recovery(&cx.slot);
        VaultSource {
            spec: spec.clone(),
            login,
            cx: cx.clone(),
            refresh,
            lease: None,
            superseded: Vec::new(),
            kv_version: None,
            revoke_with: None,
        }
    }

    /// For revoking a lease of a credential a reload removed: the login's token is taken now,
    /// before the reload can let the login go.
    pub fn for_revocation(spec: &VaultSpec, cx: &CredCtx) -> Self {
        let mut s = VaultSource::new(spec, Refresh::default(), cx);
        s.revoke_with = s.login.usable(cx.clock.now());
        s
    }

    async fn token(&self) -> Result<Arc<VaultToken>, FetchError> {
        if let Some(t) = self.revoke_with.clone() {
            return Ok(t);
        }
        let clock = self.cx.clock.clone();
        self.login.token(move || clock.now(), self.spec.login.timeout).await
    }

    /// A call with the login's token; a refusal makes the login check its token (it may have
    /// been revoked behind our back).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &VaultToken,
        body: Option<&Value>,
    ) -> Result<Value, FetchError> {
        let r = self.login.client.call(method, path, Some(token.secret()), body, &[]).await;
        match r.as_ref().map_err(|e| e.reason) {
            Err("vault_denied") => self.login.refused(token),
            Err("unreachable" | "timeout") => self.login.unreachable(),
            _ => {}
        }
        r
    }

    async fn identity(&self, token: &VaultToken) -> Result<Fetched, FetchError> {
        let v = self.call(Method::GET, &self.spec.path, token, None).await?;
        let d = &v["data"];
        let stated = d["ttl"].as_u64().filter(|t| *t > 0).map(Duration::from_secs);
        let jwt_exp = d["token"].as_str().and_then(super::authority::jwt_exp);
        let secret = value(d, &self.spec.fields)?;
        let now = self.cx.clock.now();
        // The JWT's own `exp` binds at the upstream; the earlier of the two wins.
        let expiry = match (stated, jwt_exp) {
            (Some(ttl), Some(at)) if at < now + ttl => Expiry::At(at),
            (Some(ttl), _) => Expiry::In(ttl),
            (None, Some(at)) => Expiry::At(at),
            (None, None) => Expiry::Unknown,
        };
        Ok(Fetched::new(secret, expiry))
    }

    async fn kv(&mut self, token: &VaultToken, recheck: Duration) -> Result<Fetched, FetchError> {
        let v = match self.call(Method::GET, &self.spec.path, token, None).await {
            Ok(v) => v,
            // The value was deleted or access to it withdrawn: it is not used any longer.
            Err(e) if e.reason == "vault_denied" || e.reason == "vault_not_found" => {
                if self.cx.slot.current().is_some() {
                    self.cx.revoked(e.reason);
                }
                self.kv_version = None;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let meta = &v["data"]["metadata"];
        let version = meta["version"].as_u64().ok_or_else(|| bad("not a KV version 2 answer (no metadata.version)"))?;
        if meta["destroyed"].as_bool() == Some(true) || meta["deletion_time"].as_str().is_some_and(|d| !d.is_empty()) {
            if self.cx.slot.current().is_some() {
                self.cx.revoked("vault_not_found");
            }
            self.kv_version = None;
            return Err(FetchError::new("vault_not_found", format!("version {version} of the secret is deleted")));
        }
        if self.kv_version.is_some_and(|v| version < v) {
            let known = self.kv_version.unwrap_or_default();
            return Err(bad(&format!("version {version} is older than version {known} in use (a lagging node?)")));
        }
        let secret = value(&v["data"]["data"], &self.spec.fields)?;
        let created =
            meta["created_time"].as_str().and_then(|t| humantime::parse_rfc3339_weak(t.split('.').next()?).ok());
        let kind = if self.kv_version == Some(version) { FetchKind::Unchanged } else { FetchKind::New };
        self.kv_version = Some(version);
        Ok(Fetched { issued_at: created, kind, ..Fetched::new(secret, Expiry::Never { recheck }) })
    }

    /// Put the lease in use aside (still valid upstream until its end).
    fn supersede(&mut self) {
        let now = self.cx.clock.now();
        self.superseded.retain(|(_, end)| *end > now);
        if let Some(l) = self.lease.take() {
            self.superseded.push((l.id, l.end));
        }
    }

    /// Renew the lease in use, when it can be and is not near its max TTL; `None`: read anew.
    async fn renew(&mut self, token: &VaultToken) -> Option<Fetched> {
        let now = self.cx.clock.now();
        let l = self.lease.as_mut().filter(|l| l.renewable && !l.capped)?;
        if l.token == token.fingerprint {
            l.token_end = token.final_end;
        }
        // A lease dies with the token that created it: renewing past that is pointless.
        let least = l.duration.mul_f64(self.refresh.at);
        if l.token_end.is_some_and(|end| end.duration_since(now).unwrap_or_default() < least) {
            self.supersede();
            return None;
        }
        let body = json!({"lease_id": l.id, "increment": l.duration.as_secs()});
        let r = self.call(Method::PUT, "sys/leases/renew", token, Some(&body)).await.and_then(|v| {
            let g = v["lease_duration"].as_u64().filter(|g| *g > 0).ok_or_else(|| bad("no lease_duration"))?;
            Ok((Duration::from_secs(g), v["renewable"].as_bool().unwrap_or(false)))
        });
        let (granted, renewable) = match r {
            Ok(g) => g,
            Err(e) => {
                self.cx.renewal_failed(e.reason, &e.message);
                self.supersede();
                return None;
            }
        };
        let l = self.lease.as_mut()?;
        // Less than `refresh.at` of the lease left before its max TTL: a new secret instead.
        if granted < least {
            l.end = now + granted;
            self.supersede();
            return None;
        }
        l.capped = granted + Duration::from_secs(1) < l.duration;
        l.renewable = renewable;
        l.end = l.token_end.map_or(now + granted, |t| t.min(now + granted));
        Some(Fetched {
            lease_id: Some(l.id.clone()),
            issued_at: Some(l.issued_at),
            kind: FetchKind::Renewed,
            ..Fetched::new(l.secret.clone(), Expiry::At(l.end))
        })
    }

    async fn dynamic(&mut self, token: &VaultToken) -> Result<Fetched, FetchError> {
        if let Some(f) = self.renew(token).await {
            return Ok(f);
        }
        let v = self.call(Method::GET, &self.spec.path, token, None).await?;
        let secret = value(&v["data"], &self.spec.fields)?;
        let id = v["lease_id"].as_str().unwrap_or("").to_string();
        let duration = Duration::from_secs(v["lease_duration"].as_u64().unwrap_or(0));
        let now = self.cx.clock.now();
        self.supersede();
        if duration.is_zero() {
            // No stated lifetime: read again at `refresh.at` of `default_ttl`.
            let mut f = Fetched::new(secret, Expiry::Unknown);
            if !id.is_empty() {
                let end = now + self.spec.life.default_ttl;
                self.superseded.push((id.clone(), end));
                f.lease_id = Some(id);
            }
            return Ok(f);
        }
        let end = token.final_end.map_or(now + duration, |t| t.min(now + duration));
        if id.is_empty() {
            return Ok(Fetched::new(secret, Expiry::At(end)));
        }
        self.lease = Some(Lease {
            id: id.clone(),
            secret: secret.clone(),
            issued_at: now,
            duration,
            renewable: v["renewable"].as_bool().unwrap_or(false),
            capped: false,
            token: token.fingerprint.clone(),
            token_end: token.final_end,
            end,
        });
        Ok(Fetched { lease_id: Some(id), issued_at: Some(now), ..Fetched::new(secret, Expiry::At(end)) })
    }
}

impl Source for VaultSource {
    async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let token = self.token().await?;
        match self.spec.kind {
            VaultKind::Identity => self.identity(&token).await,
            VaultKind::Kv { refresh_interval } => self.kv(&token, refresh_interval).await,
            VaultKind::Lease => self.dynamic(&token).await,
        }
    }

    /// Revoke the token's lease and every superseded lease still valid: a revoked credential
    /// leaves nothing of this pod's usable behind.
    async fn revoke(&mut self, t: &Token) -> Result<(), FetchError> {
        let now = self.cx.clock.now();
        let mut ids: Vec<String> = t.lease_id.iter().cloned().collect();
        if self.lease.as_ref().is_some_and(|l| t.lease_id.as_ref() == Some(&l.id)) {
            self.lease = None;
        }
        ids.extend(self.superseded.drain(..).filter(|(_, end)| *end > now).map(|(id, _)| id));
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let token = self.token().await?;
        let mut result = Ok(());
        for id in ids {
            match self.call(Method::PUT, "sys/leases/revoke", &token, Some(&json!({"lease_id": id}))).await {
                Ok(_) => tracing::info!(tool = %self.cx.tool, lease_id = %id, "Vault lease revoked"),
                Err(e) => result = Err(e),
            }
        }
        result
    }

    fn replace_next(&mut self) {
        self.supersede();
        self.kv_version = None;
    }
}

/// The injected value: one field, or `username:password` from two.
fn value(data: &Value, fields: &[String]) -> Result<SecretString, FetchError> {
    let get = |f: &str| match data.get(f) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(bad(&format!("the field {f} is not a non-empty string"))),
        None => Err(bad(&format!("the answer has no field {f}"))),
    };
    match fields {
        [one] => Ok(SecretString::from(get(one)?)),
        [user, pass] => {
            let u = get(user)?;
            if u.contains(':') {
                return Err(bad(&format!("the field {user} contains ':' and cannot be a Basic username")));
            }
            Ok(SecretString::from(format!("{u}:{}", get(pass)?)))
        }
        _ => Err(FetchError::local("a vault credential has one or two fields")),
    }
}

fn bad(m: &str) -> FetchError {
    FetchError::new("invalid_response", format!("Vault's answer: {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn one_field_or_username_and_password() {
        let d = json!({"username": "v-agent-1", "password": "p4ss", "n": 7, "empty": ""});
        let one = value(&d, &["password".into()]).unwrap();
        assert_eq!(one.expose_secret(), "p4ss");
        let two = value(&d, &["username".into(), "password".into()]).unwrap();
        assert_eq!(two.expose_secret(), "v-agent-1:p4ss");
        assert_eq!(value(&d, &["n".into()]).unwrap().expose_secret(), "7");
        let e = value(&d, &["empty".into()]).unwrap_err();
        assert!(e.message.contains("empty is not a non-empty string"));
        let e = value(&d, &["nope".into()]).unwrap_err();
        assert_eq!(e.reason, "invalid_response");
        let colon = json!({"u": "a:b", "p": "x"});
        assert!(value(&colon, &["u".into(), "p".into()]).is_err());
    }
}
