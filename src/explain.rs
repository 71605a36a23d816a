//! `credproxy check`'s route table and `credproxy explain`: the policy told back to people.

use std::process::ExitCode;

use crate::policy::{normalize, normalize_host, Action, Destination, Policy, Scheme};

/// `credproxy check`'s table: one row per route, with the tool's credential source and flags.
pub fn route_table(p: &Policy) -> String {
    let mut out = format!("policy OK: {} tool(s)\n", p.tools.len());
    out.push_str(&format!(
        "{:<20} {:<26} {:<8} {:<40} {:<16} {}\n",
        "TOOL", "CREDENTIAL", "SCHEME", "HOST:PORT", "METHODS", "PATHS"
    ));
    for t in &p.tools {
        for r in &t.routes {
            let methods = r
                .methods
                .as_ref()
                .map_or("any".to_string(), |m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","));
            let paths = if r.paths.is_empty() {
                "any".to_string()
            } else {
                r.paths.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(" ")
            };
            let mut flags = String::new();
            if r.allow_private {
                flags.push_str(" [allow_private]");
            }
            if t.selected_by_header {
                flags.push_str(" [selected_by_header]");
            }
            out.push_str(&format!(
                "{:<20} {:<26} {:<8} {:<40} {:<16} {}{}\n",
                t.name,
                t.credential.as_ref().map_or("none", |c| c.source()),
                r.scheme.as_str(),
                format!("{}:{}", r.host, r.port),
                methods,
                paths,
                flags
            ));
        }
        if let Some(u) = &t.upstream {
            out.push_str(&format!(
                "{:<20} base URL /{}/ -> {}://{}:{}{}\n",
                "",
                t.name,
                u.scheme.as_str(),
                u.host,
                u.port,
                u.path_prefix
            ));
        }
    }
    out
}

/// `credproxy explain`: print which tool and route would take `METHOD URL` under the policy at
/// `config`, and why; the exit code is 0 for allow, 1 for deny or an unreadable policy, 2 for
/// bad arguments.
pub fn explain(config: &std::path::Path, tool: Option<&str>, method: &str, url: &str) -> ExitCode {
    let policy = match crate::config::load_file(config) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let (Ok(method), Ok(uri)) = (http::Method::from_bytes(method.as_bytes()), url.parse::<http::Uri>()) else {
        eprintln!("usage: credproxy explain --config F METHOD URL (an absolute http:// or https:// URL)");
        return ExitCode::from(2);
    };
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => {
            eprintln!("the URL must be absolute, http:// or https://");
            return ExitCode::from(2);
        }
    };
    let Some(auth) = uri.authority() else {
        eprintln!("the URL has no host");
        return ExitCode::from(2);
    };
    if auth.as_str().contains('@') {
        println!("DENY  {method} {url}\n  reason: userinfo in a request URL is refused (400 bad_request)");
        return ExitCode::FAILURE;
    }
    let host = normalize_host(auth.host());
    let port = auth.port_u16().unwrap_or(scheme.default_port());
    let path = match normalize(uri.path()) {
        Ok(p) => p,
        Err(e) => {
            println!("DENY  {method} {url}\n  reason: {e} (400 bad_request)");
            return ExitCode::FAILURE;
        }
    };
    let dest = Destination { scheme, host: &host, port, method: &method, path: &path, tool, by_path: false };
    let d = policy.decide(&dest);
    println!("destination: {} {}://{}:{}{} (normalised path)", method, scheme.as_str(), host, port, path);
    match d.action {
        Action::Allow { tool, route } => {
            let t = &policy.tools[tool];
            let r = &t.routes[route];
            println!(
                "ALLOW  tool {} via tools.{}.routes[{route}] ({}://{}:{})",
                t.name,
                t.name,
                r.scheme.as_str(),
                r.host,
                r.port
            );
            println!("  reason: {}", d.reason);
            match &t.credential {
                Some(c) => println!(
                    "  credential: {} source; agent credentials are stripped and the tool's injected",
                    c.source()
                ),
                None => println!("  credential: none; the request passes through untouched"),
            }
            ExitCode::SUCCESS
        }
        Action::Deny => {
            println!("DENY  403 route_denied\n  reason: {} ({})", d.reason, d.reason.code());
            ExitCode::FAILURE
        }
    }
}
