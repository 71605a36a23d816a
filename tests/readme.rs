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
