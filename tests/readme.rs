//! The README's policy reference stays in step with the `///`-documented fields of `src/config.rs`.

#[test]
fn every_policy_field_is_in_the_readme() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("src/config.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let reference = readme.split("## Policy reference").nth(1).expect("README has a policy reference");
    let mut missing = Vec::new();
    let mut documented = 0;
    let lines: Vec<&str> = config.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        let Some(rest) = t.strip_prefix("pub ").filter(|r| {
            !r.starts_with("struct") && !r.starts_with("enum") && !r.starts_with("mod") && !r.starts_with("use")
        }) else {
            continue;
        };
        let Some((name, _)) = rest.split_once(':') else { continue };
        // Every field carries a doc comment (possibly above attributes).
        let doc = lines[..i].iter().rev().map(|l| l.trim()).find(|l| !l.starts_with("#["));
        assert!(doc.is_some_and(|d| d.starts_with("///")), "src/config.rs: field `{name}` has no /// doc");
        documented += 1;
        if !reference.contains(&format!("`{name}")) && !reference.contains(&format!(".{name}`")) {
            missing.push(name.to_string());
        }
    }
    assert!(documented > 30, "found the config fields");
    assert!(missing.is_empty(), "README policy reference lacks: {missing:?}");
}

/// The README's error table names every code credproxy answers with, with its status, and no
/// code the code does not have.
#[test]
fn the_error_table_matches_the_one_mapping() {
    use credproxy::error::ProxyError;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let all = [
        ProxyError::RouteDenied(""),
        ProxyError::CredentialUnavailable,
        ProxyError::UpstreamUnreachable(String::new()),
        ProxyError::UpstreamTls(String::new()),
        ProxyError::UpstreamTimeout,
        ProxyError::BadRequest(""),
        ProxyError::Misdirected,
        ProxyError::HeadersTooLarge,
        ProxyError::UriTooLong,
        ProxyError::TooManyConnections,
        ProxyError::ProxyAuthRequired,
        ProxyError::LoopDetected,
    ];
    // Every arm of the mapping is in the list above (a new variant must be added here too).
    let source = std::fs::read_to_string(root.join("src/error.rs")).unwrap();
    let mapping = source.split("pub fn parts(").nth(1).unwrap().split("\n    }\n").next().unwrap();
    assert_eq!(mapping.matches("=> (StatusCode::").count() + mapping.matches("=> {\n").count(), all.len());
    let rows: std::collections::BTreeMap<String, u16> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let status = cells.get(2)?.parse().ok()?;
            Some((code.to_string(), status))
        })
        .collect();
    for e in &all {
        let (status, code, _) = e.parts();
        assert_eq!(rows.get(code), Some(&status.as_u16()), "README error table: {code}");
    }
    // The rest of the table is the control API's own answers, which src/admin.rs gives.
    let admin = std::fs::read_to_string(root.join("src/admin.rs")).unwrap();
    for code in rows.keys().filter(|c| !all.iter().any(|e| e.parts().1 == c.as_str())) {
        assert!(admin.contains(&format!("\"{code}\"")), "README lists {code}, which nothing answers");
    }
}

/// The README's metric table names every metric the registry declares, and nothing else.
#[test]
fn the_metric_table_matches_the_registry() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = readme.split("\nMetrics (").nth(1).unwrap().split("\n\n").nth(1).unwrap();
    let names = |text: &str, quote: char| -> std::collections::BTreeSet<String> {
        text.split(quote)
            .filter(|w| w.starts_with("credproxy_") && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_string)
            .collect()
    };
    let declared = names(&std::fs::read_to_string(root.join("src/metrics.rs")).unwrap(), '"');
    let documented = names(table, '`');
    assert!(declared.len() >= 15, "{declared:?}");
    assert_eq!(documented, declared);
}

/// The README's Kubernetes section states the injector's contract as `src/inject/contract.rs`
/// holds it, and every command of its walk-through says whether CI runs it (naming the test) or
/// it needs a cluster.
#[test]
fn the_kubernetes_section_matches_the_contract_and_marks_what_ci_runs() {
    use credproxy::inject::contract as c;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme.split("\n## Kubernetes\n").nth(1).unwrap().split("\n## ").next().unwrap();
    for a in c::ANNOTATIONS {
        assert!(section.contains(&format!("`{a}`")), "{a} is not in the annotation table");
    }
    let facts = [
        c::POLICY_DIR.to_string() + "/",
        c::SECRETS_DIR.to_string() + "/",
        c::TOKEN_PATH.into(),
        c::CA_DIR.to_string() + "/",
        c::CONTROL_DIR.to_string() + "/",
        c::CONTROL.into(),
        c::NO_PROXY_LOOPBACK.into(),
        c::DEFAULT_IMAGE.into(),
        format!("`{}`, `{}`", c::DEFAULT_PROXY_PORT, c::DEFAULT_ADMIN_PORT),
        format!(
            "`{}`, `{}`, `{}`, `{}`",
            c::DEFAULT_CPU_REQUEST,
            c::DEFAULT_CPU_LIMIT,
            c::DEFAULT_MEMORY_REQUEST,
            c::DEFAULT_MEMORY_LIMIT
        ),
        format!("UID and GID {}", c::UID),
        format!("--ca-dir {}", c::CA_DIR),
        format!("--admin-listen 0.0.0.0:{}", c::DEFAULT_ADMIN_PORT),
    ];
    for f in &facts {
        assert!(section.contains(f.as_str()), "the Kubernetes section does not say {f:?}");
    }
    let walk = section.split("```sh\n").nth(1).unwrap().split("\n```").next().unwrap();
    let (mut ci, mut cluster) = (0, 0);
    for line in walk.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        if let Some(test) = line.split("# CI: ").nth(1) {
            assert!(root.join(test.trim()).exists(), "{line}: no {test}");
            ci += 1;
        } else if line.trim_end().ends_with("# cluster") {
            cluster += 1;
        } else {
            assert!(line.contains("(not run in CI)"), "{line}: say whether CI runs it");
        }
    }
    assert!(ci >= 5 && cluster >= 4, "{ci} CI steps, {cluster} cluster steps");
}
