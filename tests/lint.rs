//! `credproxy check --lint [--strict]`: one fixture per broad grant (tests/fixtures/lint/), each
//! warned about at its path and line; config/example.yaml warns only where its comments say so.
//!
//! A fixture names the warned path in a `# path: PATH` first line and marks the warned line with
//! `# lint: KIND`; config/example.yaml acknowledges each broad grant it keeps the same way.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credproxy"))
        .args(["check", "--config"])
        .arg(file)
        .args(args)
        .env("POD_NAME", "lint-test")
        .env("MAPS_API_KEY", "x")
        .output()
        .unwrap()
}

/// (path, line, kind) of every warning printed.
fn warnings(out: &Output) -> Vec<(String, usize, String)> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("warning: "))
        .map(|l| {
            // "FILE: PATH (line N): message [kind]"
            let (_, rest) = l.split_once(": ").unwrap();
            let (path, rest) = rest.split_once(" (line ").unwrap_or_else(|| panic!("no line in {l}"));
            let (line, rest) = rest.split_once("): ").unwrap();
            let kind = rest.rsplit_once('[').unwrap().1.trim_end_matches(']');
            (path.to_string(), line.parse().unwrap(), kind.to_string())
        })
        .collect()
}

/// (line, kind) of every `# lint: KIND[, KIND] (why)` comment.
fn acknowledged(text: &str) -> BTreeSet<(usize, String)> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let Some((_, ack)) = line.split_once("# lint: ") else { continue };
        let kinds = ack.split(" (").next().unwrap();
        out.extend(kinds.split(", ").map(|k| (i + 1, k.trim().to_string())));
    }
    out
}

#[test]
fn every_fixture_warns_once_at_its_path_and_line_and_strict_exits_2() {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root().join("tests/fixtures/lint")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut kinds = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let path = text.lines().next().and_then(|l| l.strip_prefix("# path: ")).expect("# path: first line");
        let out = check(file, &["--lint"]);
        assert_eq!(out.status.code(), Some(0), "{}: {out:?}", file.display());
        let got = warnings(&out);
        let ack = acknowledged(&text);
        assert_eq!(ack.len(), 1, "{}: one marked line", file.display());
        let (line, kind) = ack.into_iter().next().unwrap();
        assert_eq!(got, vec![(path.to_string(), line, kind.clone())], "{}", file.display());
        // The file is named after the kind it shows (or a variant of it).
        let stem = file.file_stem().unwrap().to_str().unwrap();
        assert!(stem == kind || stem.starts_with(kind.split('_').next().unwrap()), "{stem} shows {kind}");
        kinds.insert(kind);
        assert_eq!(check(file, &["--lint", "--strict"]).status.code(), Some(2), "{}", file.display());
        // Without --lint, no warning and the same route table.
        let plain = check(file, &[]);
        assert_eq!(plain.status.code(), Some(0));
        assert!(warnings(&plain).is_empty() && plain.stdout == out.stdout);
    }
    let all = [
        "allow_private_wildcard",
        "credential_all_paths",
        "credential_any_method",
        "credential_wildcard_host",
        "long_lifetime",
        "overlapping_tools",
        "static_credential",
    ];
    assert_eq!(kinds, all.iter().map(|k| k.to_string()).collect(), "one fixture per warning");
}

#[test]
fn example_policy_warns_only_where_its_comments_acknowledge() {
    let file = root().join("config/example.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let out = check(&file, &["--lint"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let got: BTreeSet<(usize, String)> = warnings(&out).into_iter().map(|(_, l, k)| (l, k)).collect();
    assert!(!got.is_empty());
    assert_eq!(got, acknowledged(&text), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check(&file, &["--lint", "--strict"]).status.code(), Some(2));
}

#[test]
fn a_narrow_policy_passes_strict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("narrow.yaml");
    std::fs::write(
        &file,
        "version: 1\ntools:\n  api:\n    credential: { source: exec, command: [/bin/echo], max_ttl: 30m }\n    routes: [{ host: api.example.com, methods: [GET], paths: [\"/v1/items/**\"] }]\n  pypi:\n    routes: [{ host: pypi.org }]\n",
    )
    .unwrap();
    let out = check(&file, &["--lint", "--strict"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 lint warning(s)"));
}
