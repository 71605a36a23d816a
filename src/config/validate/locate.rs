//! Find the line of a document path (`tools.github.routes[1].paths[0]`) in policy text, so that
//! semantic errors carry a line like parse errors do. Block style is followed line by line; a
//! flow collection (`{ ... }`, `[ ... ]`) or inline value ends the descent at its own line.

/// One step of a path.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').unwrap_or((part, ""));
        out.push(Step::Key(key));
        while let Some((n, r)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Step::Index(i));
            }
            rest = r.strip_prefix('[').unwrap_or("");
        }
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn content(line: &str) -> Option<&str> {
    let t = line.trim();
    (!t.is_empty() && !t.starts_with('#')).then_some(t)
}

/// The 1-based line of `path` in `text`, or of its deepest ancestor found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let steps = steps(path);
    // Search lines [from, to) for entries indented more than `parent`.
    let (mut from, mut to, mut parent) = (0usize, lines.len(), -1isize);
    let mut found = None;
    let mut i = 0;
    while i < steps.len() {
        let hit = match steps[i] {
            Step::Index(n) => find_item(&lines, from, to, parent, n).map(|l| (l, false, 1)),
            // A key may itself contain dots (`resolve.api.internal.example`): try longer joins.
            Step::Key(_) => (1..=steps.len() - i).find_map(|len| {
                let parts: Option<Vec<&str>> =
                    steps[i..i + len].iter().map(|s| if let Step::Key(k) = s { Some(*k) } else { None }).collect();
                find_key(&lines, from, to, parent, &parts?.join(".")).map(|(l, inline)| (l, inline, len))
            }),
        };
        let Some((line, inline, used)) = hit else { break };
        found = Some(line + 1);
        if inline {
            break;
        }
        let own = indent(lines[line]);
        let item = lines[line].trim_start().starts_with("- ");
        // An item's mapping starts on its own `- ` line, two columns in.
        from = if item { line } else { line + 1 };
        parent = if item { own as isize + 1 } else { own as isize };
        to = (line + 1..lines.len())
            .find(|&l| content(lines[l]).is_some() && indent(lines[l]) <= own)
            .unwrap_or(lines.len());
        i += used;
    }
    found
}

/// Find `key:`; returns the line and whether the value is inline (a scalar or flow collection).
fn find_key(lines: &[&str], from: usize, to: usize, parent: isize, key: &str) -> Option<(usize, bool)> {
    for (l, line) in lines.iter().enumerate().take(to).skip(from) {
        let Some(t) = content(line) else { continue };
        let t = match t.strip_prefix("- ") {
            // The first line of a sequence item holds its first key.
            Some(rest) if l == from => rest,
            _ if (indent(line) as isize) <= parent => continue,
            _ => t,
        };
        for cand in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
            if let Some(rest) = t.strip_prefix(cand.as_str()).and_then(|r| r.strip_prefix(':')) {
                let rest = rest.trim();
                return Some((l, !rest.is_empty() && !rest.starts_with('#')));
            }
        }
    }
    // Inside a flow mapping on one line (`listen: { control: ... }`): that line.
    (from..to).find(|&l| lines[l].contains(&format!("{key}:")) && lines[l].contains('{')).map(|l| (l, true))
}

/// Find the `n`th `- ` item of a block sequence.
fn find_item(lines: &[&str], from: usize, to: usize, parent: isize, n: usize) -> Option<usize> {
    let mut items = (from..to)
        .filter(|&l| content(lines[l]).is_some_and(|t| t.starts_with("- ")) && (indent(lines[l]) as isize) >= parent);
    let first = items.next()?;
    let col = indent(lines[first]);
    std::iter::once(first).chain(items).filter(|&l| indent(lines[l]) == col).nth(n)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const DOC: &str = "version: 1\nlisten: { proxy: 127.0.0.1:1, control: 0.0.0.0:2 }\nresolve:\n  api.internal.example: 10.0.0.1\ntools:\n  github:\n    credential: { source: env, var: X }\n    routes:\n      - host: a.com\n        paths: [\"/x\"]\n      - host: b.com\n        paths:\n          - /ok\n          - bad\n  other:\n    routes: [{ host: c.com }]\n";

    #[test]
    fn finds_block_and_flow_paths() {
        assert_eq!(line_of(DOC, "version"), Some(1));
        assert_eq!(line_of(DOC, "listen.control"), Some(2));
        assert_eq!(line_of(DOC, "resolve.api.internal.example"), Some(4));
        assert_eq!(line_of(DOC, "tools.github"), Some(6));
        assert_eq!(line_of(DOC, "tools.github.credential.var"), Some(7));
        assert_eq!(line_of(DOC, "tools.github.routes[0]"), Some(9));
        assert_eq!(line_of(DOC, "tools.github.routes[0].host"), Some(9));
        assert_eq!(line_of(DOC, "tools.github.routes[0].paths[0]"), Some(10));
        assert_eq!(line_of(DOC, "tools.github.routes[1]"), Some(11));
        assert_eq!(line_of(DOC, "tools.github.routes[1].paths[1]"), Some(14));
        assert_eq!(line_of(DOC, "tools.other.routes[0]"), Some(16));
        assert_eq!(line_of(DOC, "tools.other.routes[0].host"), Some(16));
        assert_eq!(line_of(DOC, "tools.missing"), Some(5));
    }
}
