//! Writing a changed manifest back as YAML that reads the same to a YAML 1.1 reader (kubectl's)
//! as to a YAML 1.2 one. serde_norway quotes strings by YAML 1.2's rules only, so `no`, `on`,
//! `y`, `1_000` or `0644` came out bare and kubectl read a bool or a number; this writer
//! leaves a string bare only when it cannot be anything else, and double-quotes the rest (JSON
//! string syntax, which YAML's double-quoted style reads as written).

use std::fmt::Write;

use serde_yaml::Value;

/// One document in block style, ending with a newline.
pub fn to_string(v: &Value) -> Result<String, String> {
    let mut out = String::new();
    match v {
        Value::Mapping(m) if !m.is_empty() => mapping(&mut out, m, 0)?,
        Value::Sequence(s) if !s.is_empty() => sequence(&mut out, s, 0)?,
        other => {
            out.push_str(&scalar(other)?);
            out.push('\n');
        }
    }
    Ok(out)
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn mapping(out: &mut String, m: &serde_yaml::Mapping, indent: usize) -> Result<(), String> {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a mapping inside a sequence item follows its "- ".
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        let key = match k {
            Value::String(s) => string(s),
            Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => {
                return Err(format!("a mapping key that is not a scalar: {k:?}"))
            }
            other => scalar(other)?,
        };
        out.push_str(&key);
        out.push(':');
        value(out, v, indent, true)?;
    }
    Ok(())
}

fn sequence(out: &mut String, s: &[Value], indent: usize) -> Result<(), String> {
    for (i, item) in s.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push('-');
        value(out, item, indent, false)?;
    }
    Ok(())
}

/// After `key:` or `-`: a scalar or empty collection on the same line, else a nested block.
/// Sequences under a key sit at the key's indentation (`key:\n- a`), as kubectl writes them.
fn value(out: &mut String, v: &Value, indent: usize, under_key: bool) -> Result<(), String> {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            if under_key {
                out.push('\n');
                mapping(out, m, indent + 2)
            } else {
                out.push(' ');
                mapping(out, m, indent + 2)
            }
        }
        Value::Sequence(s) if !s.is_empty() => {
            if under_key {
                out.push('\n');
                sequence(out, s, indent)
            } else {
                out.push(' ');
                sequence(out, s, indent + 2)
            }
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other)?);
            out.push('\n');
            Ok(())
        }
    }
}

fn scalar(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let mut s = String::new();
            let _ = write!(s, "{n}");
            s
        }
        Value::String(s) => string(s),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => return Err(format!("a tagged value ({}) cannot be written back", t.tag)),
    })
}

/// Words YAML 1.1 or 1.2 reads as a bool or null, in any case.
const SPECIAL: &[&str] = &["y", "n", "yes", "no", "true", "false", "on", "off", "null", "~"];

/// Bare when plainly a string in both YAML versions: it starts with a letter, `/`, `_`, or a `-`
/// before a letter or a dash, holds
/// only letters, digits and `_-./=@+,:` (a `:` never last or before a space, there are no
/// spaces), and is no bool or null word. Anything else is double-quoted.
fn string(s: &str) -> String {
    let mut chars = s.chars();
    let first_ok = match (chars.next(), chars.next()) {
        (Some(c), _) if c.is_ascii_alphabetic() || c == '/' || c == '_' => true,
        // `-m`, `--config`: a dash before a letter or a dash is no sequence entry and no number.
        (Some('-'), Some(c)) => c.is_ascii_alphabetic() || c == '-',
        _ => false,
    };
    let chars_ok = s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./=@+,:".contains(c));
    let colon_ok = !s.ends_with(':') && !s.contains(": ");
    let special = SPECIAL.iter().any(|w| w.eq_ignore_ascii_case(s));
    if first_ok && chars_ok && colon_ok && !special {
        s.to_string()
    } else {
        quoted(s)
    }
}

/// Double-quoted: JSON's escapes, plus `\u` for what YAML folds or refuses but JSON leaves bare
/// (DEL and the C1 controls, NEL, the line and paragraph separators, BOM and the non-characters).
fn quoted(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a string serialises");
    let awkward =
        |c: char| matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}');
    if !json.contains(awkward) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if awkward(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Which strings go bare and which are quoted; that every string reads back the same, in YAML
    /// 1.2 and in YAML 1.1, is tests/inject.rs's `the_yaml_writer_reads_back_the_same_…`.
    fn plain_strings_go_bare_and_ambiguous_ones_are_quoted() {
        let strings = [
            "credproxy.dev/inject",
            "/etc/credproxy",
            "http://127.0.0.1:15001/openai/v1",
            "--config",
            "-m",
            "no",
            "1_000",
            "0644",
            "12:30",
            "15090",
        ];
        let mut doc = serde_yaml::Mapping::new();
        for (i, t) in strings.iter().enumerate() {
            doc.insert(Value::from(*t), Value::from(*t));
            doc.insert(Value::from(format!("list{i}")), Value::Sequence(vec![Value::from(*t), Value::Null]));
        }
        let v = Value::Mapping(doc);
        let text = to_string(&v).unwrap();
        assert_eq!(serde_yaml::from_str::<Value>(&text).unwrap(), v, "{text}");
        for bare in [
            "credproxy.dev/inject: credproxy.dev/inject",
            "/etc/credproxy: /etc/credproxy",
            "- http://127.0.0.1:15001/openai/v1",
            "--config: --config",
            "- -m",
        ] {
            assert!(text.contains(bare), "{bare:?} is written bare:\n{text}");
        }
        for quoted in ["\"no\": \"no\"", "\"1_000\": \"1_000\"", "\"0644\": \"0644\"", "\"12:30\"", "\"15090\""] {
            assert!(text.contains(quoted), "{quoted:?} is quoted:\n{text}");
        }
    }

    #[test]
    fn scalar_keys_are_written_as_scalars() {
        let v: Value = serde_yaml::from_str("2024: q1\ntrue: t\n").unwrap();
        let text = to_string(&v).unwrap();
        assert_eq!(text, "2024: q1\ntrue: t\n");
        assert_eq!(serde_yaml::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn nesting_matches_the_usual_block_layout() {
        let v: Value =
            serde_yaml::from_str("a:\n  b: 1\n  c:\n  - d: x\n    e: [1, 2]\n    f: {}\n  - [g, h]\n  - []\nz: null\n")
                .unwrap();
        let text = to_string(&v).unwrap();
        assert_eq!(
            text,
            "a:\n  b: 1\n  c:\n  - d: x\n    e:\n    - 1\n    - 2\n    f: {}\n  - - g\n    - h\n  - []\nz: null\n"
        );
        assert_eq!(serde_yaml::from_str::<Value>(&text).unwrap(), v);
    }
}
