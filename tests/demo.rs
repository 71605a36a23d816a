//! `credproxy demo` as a user runs it: 30 s of traffic through rotating 10-second tokens with no
//! failed or rejected request, then a negative control whose tool API has the wrong key and
//! must reject — so the zero above is a real count. Free ports (`--free-ports`), so a user's demo
//! on the documented ports never breaks the tests; scripts/smoke runs the documented command.

use std::process::Command;

fn summary(out: &str) -> std::collections::HashMap<String, f64> {
    let line = out.lines().find(|l| l.starts_with("demo summary:")).unwrap_or_else(|| panic!("no summary in:\n{out}"));
    line.trim_start_matches("demo summary:")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn demo_rotates_with_zero_rejections_and_the_negative_control_rejects() {
    let bin = env!("CARGO_BIN_EXE_credproxy");
    let out = Command::new(bin).args(["demo", "--free-ports", "--duration", "30s"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let s = summary(&text);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(s["rotations"] >= 2.0, "{s:?}");
    assert_eq!((s["failed"], s["rejected"]), (0.0, 0.0), "{s:?}");
    assert!(s["requests"] >= 200.0, "{s:?}");
    assert!(s["distinct_tokens_accepted"] >= 4.0, "the tool API saw the rotated tokens: {s:?}");
    assert!(text.contains(" rotated "), "rotations are shown live:\n{text}");

    let out = Command::new(bin).args(["demo", "--free-ports", "--duration", "4s", "--wrong-key"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let s = summary(&text);
    assert!(!out.status.success(), "the negative control must fail:\n{text}");
    assert!(s["rejected"] > 0.0 && s["distinct_tokens_accepted"] == 0.0, "{s:?}");
}
