//! The inventory for people (aligned tables) and for machines (`--json`).

use std::fmt::Write;

use serde_json::{json, Value};

use super::{Inventory, Kind};

fn count(map: &std::collections::BTreeMap<Kind, usize>, k: Kind) -> usize {
    map.get(&k).copied().unwrap_or(0)
}

/// Rows as aligned columns (two spaces apart, the last column unpadded).
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let n = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n - 1) {
            width[i] = width[i].max(super::printable(c).len());
        }
    }
    for r in std::iter::once(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().map(|c| super::printable(c)).enumerate() {
            if i + 1 < n {
                let _ = write!(line, "{c:<w$}  ", w = width[i]);
            } else {
                line.push_str(&c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The text report.
pub fn text(inv: &Inventory) -> String {
    let mut out = String::new();
    let window = inv.window.as_ref().map_or("no events".into(), |(a, b)| format!("{a} to {b}"));
    let _ = writeln!(out, "{} request events, {window}", inv.events);
    if inv.skipped > 0 {
        let _ = writeln!(out, "{} lines skipped (not JSON objects)", inv.skipped);
    }
    out.push_str("\nDESTINATIONS\n");
    let rows: Vec<Vec<String>> = inv
        .destinations
        .iter()
        .map(|(d, s)| {
            vec![
                d.to_string(),
                s.requests().to_string(),
                count(&s.kinds, Kind::Forwarded).to_string(),
                count(&s.kinds, Kind::WouldDeny).to_string(),
                count(&s.kinds, Kind::Denied).to_string(),
                s.keys.len().to_string(),
            ]
        })
        .collect();
    table(&mut out, &["DESTINATION", "REQUESTS", "ALLOWED", "WOULD_DENY", "DENIED", "AGENT_KEYS"], &rows);

    out.push_str("\nPATHS (ids folded to *)\n");
    let mut rows = Vec::new();
    for (d, s) in &inv.destinations {
        for ((method, path), (n, outcomes)) in &s.paths {
            let outcomes: Vec<&str> = outcomes.iter().map(String::as_str).collect();
            rows.push(vec![
                d.to_string(),
                method.clone(),
                path.clone().unwrap_or_else(|| "(tunnel)".into()),
                n.to_string(),
                outcomes.join(", "),
            ]);
        }
    }
    table(&mut out, &["DESTINATION", "METHOD", "PATH", "REQUESTS", "SERVED BY / WHY NOT"], &rows);

    let _ = writeln!(out, "\nAGENT CREDENTIALS ({} distinct keys)", inv.distinct_keys());
    let rows: Vec<Vec<String>> = inv
        .credentials
        .iter()
        .map(|(c, dests)| {
            let total: usize = dests.values().sum();
            let where_: Vec<String> = dests.iter().map(|(d, n)| format!("{d} ({n})")).collect();
            vec![c.fingerprint.clone(), c.field.clone(), total.to_string(), where_.join(", ")]
        })
        .collect();
    table(&mut out, &["FINGERPRINT", "FIELD", "REQUESTS", "SENT TO"], &rows);

    if let (Some(routes), false) = (&inv.routes, inv.forwarded_seen) {
        let _ = writeln!(
            out,
            "\nPOLICY ROUTES: {} routes; their use is unknown, the log has no request.forwarded events \
             (record with audit.requests: all, or in report mode)",
            routes.len()
        );
    } else if let Some(routes) = &inv.routes {
        out.push_str("\nPOLICY ROUTES\n");
        let rows: Vec<Vec<String>> = routes
            .iter()
            .map(|r| {
                let note = if r.requests == 0 { "  (unused: a candidate to remove)" } else { "" };
                vec![
                    format!("tools.{}.routes[{}]", r.tool, r.index),
                    r.requests.to_string(),
                    format!("{}{note}", r.describe),
                ]
            })
            .collect();
        table(&mut out, &["ROUTE", "REQUESTS", "MATCHES"], &rows);
        let unused = routes.iter().filter(|r| r.requests == 0).count();
        let _ = writeln!(out, "{unused} of {} routes unused in this window", routes.len());
    }
    out
}

/// The same, as one JSON document.
pub fn json(inv: &Inventory) -> Value {
    let destinations: Vec<Value> = inv
        .destinations
        .iter()
        .map(|(d, s)| {
            let paths: Vec<Value> = s
                .paths
                .iter()
                .map(|((method, path), (n, outcomes))| {
                    json!({"method": method, "path": path, "requests": n, "outcomes": outcomes})
                })
                .collect();
            json!({
                "scheme": d.scheme, "host": d.host, "port": d.port, "requests": s.requests(),
                "allowed": count(&s.kinds, Kind::Forwarded), "would_deny": count(&s.kinds, Kind::WouldDeny),
                "denied": count(&s.kinds, Kind::Denied), "agent_keys": s.keys, "paths": paths,
            })
        })
        .collect();
    let credentials: Vec<Value> = inv
        .credentials
        .iter()
        .map(|(c, dests)| {
            let sent: Vec<Value> =
                dests.iter().map(|(d, n)| json!({"destination": d.to_string(), "requests": n})).collect();
            json!({"fingerprint": c.fingerprint, "field": c.field, "sent_to": sent})
        })
        .collect();
    let routes = inv.routes.as_ref().map(|rs| {
        rs.iter()
            .map(|r| {
                let (requests, unused) = match inv.forwarded_seen {
                    true => (json!(r.requests), json!(r.requests == 0)),
                    false => (Value::Null, Value::Null),
                };
                json!({"tool": r.tool, "route": r.index, "matches": r.describe, "requests": requests, "unused": unused})
            })
            .collect::<Vec<_>>()
    });
    json!({
        "events": inv.events,
        "skipped_lines": inv.skipped,
        "window": inv.window.as_ref().map(|(a, b)| json!({"from": a, "to": b})),
        "destinations": destinations,
        "distinct_agent_keys": inv.distinct_keys(),
        "agent_credentials": credentials,
        "routes": routes,
    })
}
