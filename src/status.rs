//! `credproxy status`: read the control API and print one row per credential.

use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::policy::ControlAddr;

/// `GET /v1/credentials` from the control listener at `addr`, with the bearer token `token`
/// when the listener asks for one.
pub async fn fetch(addr: &ControlAddr, token: Option<&str>) -> Result<Value, String> {
    let unreachable =
        |e: std::io::Error| format!("cannot reach the control API at {addr}: {e} (is credproxy running?)");
    let get = async {
        let (host, io): (String, Box<dyn IoStream>) = match addr {
            ControlAddr::Unix(p) => {
                ("localhost".into(), Box::new(tokio::net::UnixStream::connect(p).await.map_err(unreachable)?))
            }
            ControlAddr::Tcp(a) => (
                format!("localhost:{}", a.port()),
                Box::new(tokio::net::TcpStream::connect(a).await.map_err(unreachable)?),
            ),
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|_| format!("the control API at {addr} did not speak HTTP"))?;
        tokio::spawn(conn);
        let mut req = http::Request::get("/v1/credentials").header(http::header::HOST, host);
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|_| "the control auth token is not a valid header".to_string())?;
        let r = send.send_request(req).await.map_err(|_| "the control API closed the connection".to_string())?;
        let status = r.status();
        let body = r.into_body().collect().await.map_err(|_| "the control API closed the connection".to_string())?;
        if status == http::StatusCode::UNAUTHORIZED {
            return Err("the control API wants a bearer token: pass --control-auth-file".into());
        }
        if !status.is_success() {
            return Err(format!("the control API answered {status}"));
        }
        serde_json::from_slice(&body.to_bytes()).map_err(|_| "the control API did not answer JSON".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), get).await.map_err(|_| format!("no answer from {addr} within 5 s"))?
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

fn ago_or_in(at: Option<&str>, now: SystemTime, future: bool) -> String {
    let Some(t) = at.and_then(|s| humantime::parse_rfc3339_weak(s).ok()) else { return "-".into() };
    let d = if future { t.duration_since(now) } else { now.duration_since(t) };
    match d {
        Ok(d) => short(d),
        Err(_) if future => "past".into(),
        Err(_) => "-".into(),
    }
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{}s", s),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The granted scopes, those not requested marked `+`; `-` when the source has none.
fn scopes(v: &Value) -> String {
    let names = |k: &str| -> Vec<&str> {
        v[k].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(Value::as_str).collect()
    };
    if v.is_null() {
        return "-".into();
    }
    let excess = names("excess");
    let granted: Vec<String> =
        names("granted").iter().map(|g| if excess.contains(g) { format!("+{g}") } else { g.to_string() }).collect();
    if granted.is_empty() {
        "(none)".into()
    } else {
        granted.join(" ")
    }
}

/// The table: TOOL SOURCE STATE AGE EXPIRES NEXT-REFRESH FAILURES LAST-ERROR (and, `wide`,
/// SCOPES before LAST-ERROR).
pub fn table(v: &Value, now: SystemTime, wide: bool) -> String {
    let mut out = format!("instance {}\n", v["instance"].as_str().unwrap_or("?"));
    if v["mode"] == "report" {
        out.push_str(
            "REPORT MODE: the policy is not enforced; requests no route allows pass with the agent's own \
             credentials (audited as request.would_deny)\n",
        );
    }
    let scopes_head = if wide { format!("{:<32} ", "SCOPES (+ not requested)") } else { String::new() };
    out.push_str(&format!(
        "{:<20} {:<26} {:<8} {:>6} {:>8} {:>8} {:>8}  {scopes_head}{}\n",
        "TOOL", "SOURCE", "STATE", "AGE", "EXPIRES", "REFRESH", "FAILURES", "LAST ERROR"
    ));
    for c in v["credentials"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let s = |k: &str| c[k].as_str();
        let scopes = if wide { format!("{:<32} ", scopes(&c["scopes"])) } else { String::new() };
        out.push_str(&format!(
            "{:<20} {:<26} {:<8} {:>6} {:>8} {:>8} {:>8}  {scopes}{}\n",
            s("tool").unwrap_or("?"),
            s("source").unwrap_or("?"),
            s("state").unwrap_or("?"),
            ago_or_in(s("issued_at"), now, false),
            ago_or_in(s("expires_at"), now, true),
            ago_or_in(s("next_refresh_at"), now, true),
            c["consecutive_failures"].as_u64().unwrap_or(0),
            s("last_error").unwrap_or("-"),
        ));
    }
    let logins = v["logins"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !logins.is_empty() {
        out.push_str(&format!(
            "\n{:<32} {:<8} {:>8} {:>8} {:>8}  {:<24} {}\n",
            "VAULT LOGIN", "STATE", "EXPIRES", "RENEWAL", "FAILURES", "TOOLS", "LAST ERROR"
        ));
    }
    for l in logins {
        let s = |k: &str| l[k].as_str();
        let tools: Vec<&str> =
            l["tools"].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "{:<32} {:<8} {:>8} {:>8} {:>8}  {:<24} {}\n",
            s("login").unwrap_or("?"),
            s("state").unwrap_or("?"),
            ago_or_in(s("expires_at"), now, true),
            ago_or_in(s("next_renewal_at"), now, true),
            l["consecutive_failures"].as_u64().unwrap_or(0),
            tools.join(","),
            s("last_error").unwrap_or("-"),
        ));
    }
    let certs = v["client_certificates"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !certs.is_empty() {
        out.push_str(&format!(
            "\n{:<20} {:<8} {:>8} {:>8}  {:<60} {}\n",
            "CLIENT CERTIFICATE", "STATE", "EXPIRES", "FAILURES", "SERIAL", "LAST ERROR"
        ));
    }
    for c in certs {
        let s = |k: &str| c[k].as_str();
        out.push_str(&format!(
            "{:<20} {:<8} {:>8} {:>8}  {:<60} {}\n",
            s("tool").unwrap_or("?"),
            s("state").unwrap_or("?"),
            ago_or_in(s("expires_at"), now, true),
            c["consecutive_failures"].as_u64().unwrap_or(0),
            s("serial").unwrap_or("-"),
            s("last_error").unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_row_per_credential() {
        let now = humantime::parse_rfc3339("2026-11-26T10:00:00Z").unwrap();
        let v = serde_json::json!({"instance": "pod-1", "credentials": [
            {"tool": "github", "source": "oauth2_client_credentials", "state": "valid",
             "issued_at": "2026-11-26T09:59:30Z", "expires_at": "2026-11-26T10:04:30Z",
             "next_refresh_at": "2026-11-26T10:02:00Z", "consecutive_failures": 0, "last_error": null},
            {"tool": "search", "source": "jwt", "state": "failing", "issued_at": null, "expires_at": null,
             "next_refresh_at": "2026-11-26T10:00:07Z", "consecutive_failures": 3, "last_error": "local_error: key.pem is empty"}]});
        let t = table(&v, now, false);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4);
        assert!(
            rows[2].starts_with("github")
                && rows[2].contains("30s")
                && rows[2].contains("4m")
                && rows[2].contains("2m")
        );
        assert!(rows[3].contains("failing") && rows[3].contains(" 3  local_error: key.pem is empty"));
    }

    #[test]
    fn logins_have_their_own_section() {
        let now = humantime::parse_rfc3339("2026-11-26T10:00:00Z").unwrap();
        let v = serde_json::json!({"instance": "pod-1", "credentials": [], "logins": [
            {"login": "jwt:jwt/agent", "method": "jwt", "state": "failed", "expires_at": null,
             "next_renewal_at": "2026-11-26T10:00:30Z", "consecutive_failures": 2,
             "last_error": "vault_invalid_request: Vault answered 400 (refused): invalid audience",
             "tools": ["github", "search"], "required": true}]});
        let t = table(&v, now, false);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 5, "{t}");
        assert!(rows[3].starts_with("VAULT LOGIN"), "{t}");
        assert!(rows[4].starts_with("jwt:jwt/agent") && rows[4].contains("failed") && rows[4].contains("30s"), "{t}");
        assert!(rows[4].contains("github,search") && rows[4].ends_with("invalid audience"), "{t}");
    }

    #[test]
    fn client_certificates_have_their_own_section() {
        let now = humantime::parse_rfc3339("2026-11-26T10:00:00Z").unwrap();
        let v = serde_json::json!({"instance": "pod-1", "credentials": [], "client_certificates": [
            {"tool": "ledger", "state": "valid", "serial": "4e:c3", "expires_at": "2026-11-26T11:00:00Z",
             "consecutive_failures": 1, "last_error": "vault_unavailable: Vault answered 503"}]});
        let t = table(&v, now, false);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 5, "{t}");
        assert!(rows[3].starts_with("CLIENT CERTIFICATE"), "{t}");
        assert!(rows[4].starts_with("ledger") && rows[4].contains("60m") && rows[4].contains("4e:c3"), "{t}");
        assert!(rows[4].ends_with("vault_unavailable: Vault answered 503"), "{t}");
    }
}
