//! decide + strip/inject on a policy of 50 tools: the request path's per-request policy work.
//! `cargo bench --bench decide_inject` prints the median ns per request of several runs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use credproxy::creds::{Slot, Token};
use credproxy::policy::{normalize, Action, Destination, Scheme};
use credproxy::proxy::inject::strip_and_inject;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method};
use secrecy::SecretString;

fn policy_yaml(tools: usize) -> String {
    let mut s = String::from("version: 1\ntools:\n");
    for i in 0..tools {
        s.push_str(&format!(
            "  tool-{i}:\n    credential: {{ source: env, var: T{i} }}\n    routes:\n      - {{ host: api{i}.example.com, methods: [GET, POST], paths: [\"/v1/**\", \"/repos/acme/*/issues\"] }}\n      - {{ host: \"*.svc{i}.example.net\" }}\n"
        ));
    }
    s
}

fn main() {
    let policy = credproxy::config::parse(&policy_yaml(50), &|_| None, SystemTime::now()).expect("valid bench policy");
    let now = SystemTime::now();
    let slots: Vec<Arc<Slot>> = policy
        .tools
        .iter()
        .map(|t| {
            let slot = Arc::new(Slot::new("env", None));
            slot.publish(
                Token::new(SecretString::from(format!("token-for-{}", t.name)), &t.inject, now, None).unwrap(),
            );
            slot
        })
        .collect();
    let strip: Vec<HeaderName> = credproxy::state::builtin_strip().into_iter().collect();
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("user-agent", "OpenAI/Python 1.0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("authorization", "Bearer credproxy"),
        ("x-stainless-lang", "python"),
        ("x-request-id", "7f9c2ba4-e88f-4a2b-9f5e-1c3d0b5a7e21"),
    ] {
        template.insert(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
    }
    let hosts: Vec<String> = (0..50).map(|i| format!("api{i}.example.com")).collect();
    let method = Method::GET;
    // `cargo bench --bench decide_inject -- --test` (run by scripts/test): a few iterations that
    // check what was injected, so the bench cannot rot.
    let test = std::env::args().any(|a| a == "--test");
    let (runs, iters) = if test { (1, 1_000) } else { (7, 200_000) };
    let mut results = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        for n in 0..iters {
            let host = &hosts[n % 50];
            let path = normalize(black_box("/repos/acme/widgets/issues")).unwrap();
            let dest = Destination {
                scheme: Scheme::Https,
                host,
                port: 443,
                method: &method,
                path: &path,
                tool: None,
                by_path: false,
            };
            let Action::Allow { tool, .. } = policy.decide(&dest).action else { panic!("denied") };
            let mut headers = template.clone();
            let token =
                strip_and_inject(&mut headers, &strip, Some((&slots[tool], &policy.tools[tool].inject)), 65536, now);
            let token = token.unwrap();
            if test {
                let want = format!("Bearer token-for-tool-{}", n % 50);
                assert_eq!(headers.get_all("authorization").iter().collect::<Vec<_>>(), [want.as_str()]);
                assert!(token.is_some());
            }
            black_box((token, headers));
        }
        results.push(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    if test {
        println!("decide_inject: {iters} requests checked");
        return;
    }
    results.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "decide + strip/inject, 50 tools: median {:.0} ns/request (min {:.0}, max {:.0}; 7 runs of {iters})",
        results[3], results[0], results[6]
    );
}
