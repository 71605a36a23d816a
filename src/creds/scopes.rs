//! Scope creep: the scopes an OAuth authority granted, set against the ones credproxy asked for.
//! Granted scopes come from the token response's `scope`, else from the `scope`/`scp` claim of
//! a JWT access token (read without verifying: it only informs), else — RFC 6749 §5.1 — they
//! are the ones requested. Scope names are not secrets.

/// Most scopes kept from one answer; more are dropped (an authority cannot flood the status).
const MAX_SCOPES: usize = 100;
/// Longest scope name kept.
const MAX_SCOPE_BYTES: usize = 200;

/// Requested and granted scopes of one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    /// What credproxy asked for (`scopes` in the policy).
    pub requested: Vec<String>,
    /// What the authority granted.
    pub granted: Vec<String>,
    /// Where `granted` comes from: `response`, `jwt` or `implied` (the answer named none).
    pub stated_by: &'static str,
}

impl Scopes {
    /// Work out the granted scopes of a token response.
    pub fn of(requested: &[String], response_scope: Option<&str>, access_token: &str) -> Scopes {
        let (granted, stated_by) = match (response_scope, jwt_claim(access_token)) {
            (Some(s), _) => (split(s), "response"),
            (None, Some(g)) => (g, "jwt"),
            (None, None) => (requested.to_vec(), "implied"),
        };
        Scopes { requested: requested.to_vec(), granted, stated_by }
    }

    /// The granted scopes that were not requested, in the order granted.
    pub fn excess(&self) -> Vec<&str> {
        self.granted.iter().filter(|g| !self.requested.contains(g)).map(String::as_str).collect()
    }

    /// The same, as a set (what a change of excess is judged by).
    pub fn excess_set(&self) -> std::collections::BTreeSet<&str> {
        self.excess().into_iter().collect()
    }
}

/// Space-separated scope-tokens (RFC 6749 §3.3), the valid ones only, without repeats.
fn split(s: &str) -> Vec<String> {
    keep(s.split(' '))
}

fn keep<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let valid = !n.is_empty()
            && n.len() <= MAX_SCOPE_BYTES
            && n.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if valid && out.len() < MAX_SCOPES && !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    out
}

/// The `scope` (a string, or a list) or `scp` claim of a JWT, unverified.
fn jwt_claim(token: &str) -> Option<Vec<String>> {
    let v = super::authority::jwt_claims(token)?;
    let claim = v.get("scope").or_else(|| v.get("scp"))?;
    match claim {
        serde_json::Value::String(s) => Some(split(s)),
        serde_json::Value::Array(a) => Some(keep(a.iter().filter_map(|x| x.as_str()))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn req(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn granted_from_response_then_jwt_then_implied() {
        let r = req(&["issues:read"]);
        let s = Scopes::of(&r, Some("issues:read admin repo"), "opaque");
        assert_eq!((s.stated_by, s.excess()), ("response", vec!["admin", "repo"]));
        let s = Scopes::of(&r, None, &jwt(r#"{"scope":"issues:read write"}"#));
        assert_eq!((s.stated_by, s.excess()), ("jwt", vec!["write"]));
        let s = Scopes::of(&r, None, &jwt(r#"{"scp":["issues:read","admin"]}"#));
        assert_eq!((s.stated_by, s.excess()), ("jwt", vec!["admin"]));
        let s = Scopes::of(&r, None, "opaque");
        assert_eq!((s.stated_by, s.excess()), ("implied", Vec::<&str>::new()));
        // A narrower grant is no excess; invalid names and repeats are dropped.
        let s = Scopes::of(&req(&["a", "b"]), Some("a a \"x\" b"), "t");
        assert_eq!((s.granted.clone(), s.excess()), (req(&["a", "b"]), vec![]));
    }
}
