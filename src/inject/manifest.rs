//! `credproxy inject -f`: multi-document YAML in, the same documents out with the sidecar added
//! to annotated workloads. Documents that do not change are written back byte for byte; nothing
//! is written when any document fails.

use serde_yaml::Value;

use super::mutate::{mutate, Outcome};
use super::Options;

/// The most `credproxy inject` reads: far beyond any set of manifests, well short of trouble.
pub const MAX_INPUT_BYTES: usize = 16 << 20;

/// What one run produced.
#[derive(Debug)]
pub struct Injected {
    /// Every document, in order: the mutated ones re-serialised, the others as they came.
    pub output: String,
    /// How many workloads got the sidecar.
    pub injected: usize,
    /// Each prefixed with its document.
    pub warnings: Vec<String>,
}

/// A document that could not be read or mutated.
#[derive(Debug, thiserror::Error)]
#[error("document {number}{what}: {message}")]
pub struct ManifestError {
    /// 1-based, in input order.
    pub number: usize,
    /// ` (Deployment shop/agent, line 12)`: what it is and where it starts, when known.
    pub what: String,
    /// The field and what is wrong with it, or the parser's message.
    pub message: String,
}

struct Document<'a> {
    /// The `---` line before it, verbatim (with its newline), or empty for the first.
    separator: &'a str,
    body: &'a str,
    /// The `...` line that ended it, verbatim, or empty.
    end: &'a str,
    /// 1-based line of the body's first line.
    line: usize,
}

/// Split at `---` lines and after `...` end markers, keeping every byte: the separators and
/// end markers are written back as they came.
fn split(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let (mut sep, mut start, mut start_line) = ("", 0, 1);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_sep = bare.strip_prefix("---").is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']));
        let is_end = bare == "...";
        if is_sep || is_end {
            let end = if is_end { line } else { "" };
            docs.push(Document { separator: sep, body: &text[start..offset], end, line: start_line });
            sep = if is_sep { line } else { "" };
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document { separator: sep, body: &text[start..], end: "", line: start_line });
    docs
}

fn describe(v: &Value, line: usize) -> String {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let meta = v.get("metadata");
    let name = s(meta.and_then(|m| m.get("name"))).or_else(|| s(meta.and_then(|m| m.get("generateName"))));
    match (s(v.get("kind")), name) {
        (Some(kind), Some(name)) => match s(meta.and_then(|m| m.get("namespace"))) {
            Some(ns) => format!(" ({kind} {ns}/{name}, line {line})"),
            None => format!(" ({kind} {name}, line {line})"),
        },
        (Some(kind), None) => format!(" ({kind}, line {line})"),
        _ => format!(" (line {line})"),
    }
}

/// Inject every annotated workload in `text`.
pub fn inject_documents(text: &str, opts: &Options) -> Result<Injected, ManifestError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(ManifestError {
            number: 1,
            what: String::new(),
            message: format!("input larger than {MAX_INPUT_BYTES} bytes"),
        });
    }
    let mut out = Injected { output: String::with_capacity(text.len() + 4096), injected: 0, warnings: Vec::new() };
    for (i, doc) in split(text).into_iter().enumerate() {
        let number = i + 1;
        let mut value: Value = serde_yaml::from_str(doc.body).map_err(|e| {
            let line = e.location().map_or(doc.line, |l| doc.line + l.line() - 1);
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            ManifestError { number, what: format!(" (line {line})"), message }
        })?;
        out.output.push_str(doc.separator);
        if value.is_null() {
            out.output.push_str(doc.body);
            out.output.push_str(doc.end);
            continue;
        }
        let what = describe(&value, doc.line);
        // `<<: *anchor` merge keys, resolved as kubectl resolves them before anything is added;
        // a merge can bring in another, so until none is left (a few rounds for any real file).
        for _ in 0..16 {
            value.apply_merge().map_err(|e| ManifestError { number, what: what.clone(), message: e.to_string() })?;
            if !has_merge_key(&value) {
                break;
            }
        }
        if has_merge_key(&value) {
            return Err(ManifestError { number, what, message: "merge keys (<<) nested too deep".into() });
        }
        match mutate(&mut value, opts) {
            Err(e) => return Err(ManifestError { number, what, message: e.to_string() }),
            Ok(Outcome::Injected { warnings }) => {
                octal_modes(&mut value);
                let text = super::yaml::to_string(&value).map_err(|e| ManifestError {
                    number,
                    what: what.clone(),
                    message: format!("cannot write it back: {e}"),
                })?;
                out.output.push_str(&text);
                out.injected += 1;
                out.warnings.extend(warnings.into_iter().map(|w| format!("document {number}{what}: {w}")));
            }
            Ok(Outcome::AlreadyInjected { warnings }) => {
                out.output.push_str(doc.body);
                out.warnings.extend(warnings.into_iter().map(|w| format!("document {number}{what}: {w}")));
            }
            Ok(Outcome::NotAWorkload) if doc.body.contains(super::contract::INJECT) => {
                out.output.push_str(doc.body);
                out.warnings.push(format!(
                    "document {number}{what}: mentions {} but is not a kind credproxy injects (Pod, Deployment, \
                     StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, each of its current API version): left as it is",
                    super::contract::INJECT
                ));
            }
            Ok(_) => out.output.push_str(doc.body),
        }
        out.output.push_str(doc.end);
    }
    Ok(out)
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m.iter().any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        _ => false,
    }
}

/// File modes written the YAML 1.1 way kubectl reads them (`defaultMode: 0644` is octal 420),
/// which a YAML 1.2 reader keeps as the string "0644": back to numbers before a rewrite, or the
/// rewritten manifest would carry `"0644"` where Kubernetes wants an integer. Not under
/// `metadata`, where labels and annotations are strings whatever their name.
fn octal_modes(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                if k.as_str() == Some("metadata") {
                    continue;
                }
                let is_mode = matches!(k.as_str(), Some("defaultMode" | "mode"));
                let octal = v
                    .as_str()
                    .filter(|s| s.len() > 1 && s.starts_with('0'))
                    .and_then(|s| u64::from_str_radix(s, 8).ok());
                match octal {
                    Some(n) if is_mode => *v = n.into(),
                    _ => octal_modes(v),
                }
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte_and_numbers_lines() {
        let text = "# head\n---\na: 1\n--- # two\nb: 2\n...\n---\nc: 3";
        let docs = split(text);
        let joined: String = docs.iter().map(|d| format!("{}{}{}", d.separator, d.body, d.end)).collect();
        assert_eq!(joined, text);
        let bodies: Vec<&str> = docs.iter().map(|d| d.body).collect();
        assert_eq!(bodies, ["# head\n", "a: 1\n", "b: 2\n", "", "c: 3"]);
        assert_eq!(docs[2].end, "...\n");
        assert_eq!(docs[2].line, 5);
        assert_eq!(docs[4].line, 8);
        // `---x` is not a separator.
        assert_eq!(split("a: \"---x\"\n---x: 1\n").len(), 1);
    }

    #[test]
    fn octal_modes_are_rewritten_as_the_numbers_kubectl_reads() {
        let mut v: Value = serde_yaml::from_str(
            "metadata: { annotations: { mode: '0600' } }\nvolumes:\n- secret: { defaultMode: 0644, items: [{ mode: 0400 }] }\nlabel: '0644'\n",
        )
        .unwrap();
        octal_modes(&mut v);
        assert_eq!(v["volumes"][0]["secret"]["defaultMode"].as_u64(), Some(420));
        assert_eq!(v["volumes"][0]["secret"]["items"][0]["mode"].as_u64(), Some(256));
        assert_eq!(v["label"].as_str(), Some("0644"), "other strings stay");
        assert_eq!(v["metadata"]["annotations"]["mode"].as_str(), Some("0600"), "metadata is strings");
    }

    #[test]
    fn nested_merge_keys_are_resolved_all_the_way() {
        let text = "a: &base { x: 1 }\nb: &app { <<: *base, y: 2 }\nc: { <<: *app, z: 3 }\n";
        let mut v: Value = serde_yaml::from_str(text).unwrap();
        for _ in 0..16 {
            v.apply_merge().unwrap();
            if !has_merge_key(&v) {
                break;
            }
        }
        assert!(!has_merge_key(&v));
        assert_eq!(v["c"]["x"].as_u64(), Some(1));
        assert_eq!(v["c"]["y"].as_u64(), Some(2));
    }
}
