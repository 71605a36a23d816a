//! Request-path normalisation (RFC 3986) and the path globs routes match against.
//!
//! Hand-written rather than taken from a crate: the rules are ours (which escapes are refused,
//! what `*` and `**` mean), and a general URL or glob library would accept more than we want.

use std::fmt;

/// Why a request path was refused before any policy lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded separator that upstreams disagree on.
    EncodedSeparator,
    /// A literal backslash.
    Backslash,
    /// NUL, raw or encoded.
    Nul,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Escapes that do not decode to valid UTF-8 (overlong forms such as `%C0%AE` among them,
    /// which a lenient decoder turns into `.`).
    InvalidUtf8,
    /// A segment that is `.` or `..` before a `;` path parameter (`/..;/admin`): Tomcat, Jetty
    /// and Spring drop the parameter and treat it as a dot segment, so it would walk out of a glob.
    DotSegmentParameter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with '/'",
            PathError::EncodedSeparator => "encoded '/' or '\\' in path",
            PathError::Backslash => "backslash in path",
            PathError::Nul => "NUL in path",
            PathError::BadEscape => "malformed percent-escape in path",
            PathError::InvalidUtf8 => "percent-escapes that are not valid UTF-8 in path",
            PathError::DotSegmentParameter => "dot segment with a path parameter ('..;') in path",
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode every `%XX` escape (a malformed one stays as it is); no other rewriting.
pub fn percent_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match (text[i], text.get(i + 1).and_then(|&c| hex(c)), text.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalise a request path (no query): decode unreserved escapes, upper-case the others,
/// refuse encoded separators, backslashes and NUL, and remove dot segments (RFC 3986 §5.2.4).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode and no dot segment to remove.
    let simple = !bytes.iter().any(|&b| matches!(b, b'%' | b'\\' | 0)) && !raw.split('/').any(is_dot_like);
    if simple {
        return Ok(raw.to_owned());
    }
    let mut decoded = String::with_capacity(raw.len());
    // Every byte the path stands for, escapes decoded: it must be valid UTF-8.
    let mut meant: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (h, l) = match (bytes.get(i + 1).and_then(|&c| hex(c)), bytes.get(i + 2).and_then(|&c| hex(c))) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = h * 16 + l;
                meant.push(v);
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    v if is_unreserved(v) => decoded.push(v as char),
                    v => {
                        decoded.push('%');
                        decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                        decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                    }
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        // Multi-byte UTF-8 is copied through whole: `raw` is a &str, so boundaries are valid.
        let ch_len = utf8_len(b);
        decoded.push_str(&raw[i..i + ch_len]);
        meant.extend_from_slice(&bytes[i..i + ch_len]);
        i += ch_len;
    }
    if std::str::from_utf8(&meant).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    if decoded.split('/').any(|seg| is_dot_like(seg) && seg != "." && seg != "..") {
        return Err(PathError::DotSegmentParameter);
    }
    Ok(remove_dot_segments(&decoded))
}

/// `.` or `..`, alone or before a path parameter (`;`, or `%3B` which some servers decode first).
fn is_dot_like(seg: &str) -> bool {
    let end = [seg.find(';'), seg.find("%3B"), seg.find("%3b")].into_iter().flatten().min().unwrap_or(seg.len());
    matches!(&seg[..end], "." | "..")
}

/// Does a normalised path hold an encoded `%` (`%25`)? Behind it an upstream that decodes twice
/// may find a dot, a separator or a `;` the glob never saw (`%252e`, `%252F`, `..%253B`, and
/// deeper encodings), so routes with `paths` refuse such paths.
pub fn has_encoded_percent(path: &str) -> bool {
    path.contains("%25")
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// RFC 3986 §5.2.4 for an absolute path, segment-wise: `.` vanishes, `..` pops (never above root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// One segment of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Matches exactly this text.
    Literal(String),
    /// `*` inside a segment: matches the given prefix and suffix around any text without `/`.
    Wild { prefix: String, suffix: String },
    /// `**`: zero or more whole segments.
    Any,
}

/// A compiled path glob: `*` matches within one segment, `**` any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    source: String,
    segs: Vec<Seg>,
    literal_prefix: usize,
}

impl PathGlob {
    /// Compile a glob; it must start with `/`, and `**` must stand alone in its segment.
    pub fn parse(glob: &str) -> Result<Self, String> {
        if !glob.starts_with('/') {
            return Err("a path glob must start with '/'".into());
        }
        if glob.contains(['\\', '?', '#', '\0']) {
            return Err("a path glob may not contain '\\', '?', '#' or NUL".into());
        }
        let mut segs = Vec::new();
        for part in glob[1..].split('/') {
            if part == "**" {
                segs.push(Seg::Any);
            } else if part.contains("**") {
                return Err("'**' must be a whole segment".into());
            } else if let Some((prefix, suffix)) = part.split_once('*') {
                if suffix.contains('*') {
                    return Err("at most one '*' per segment".into());
                }
                segs.push(Seg::Wild { prefix: prefix.into(), suffix: suffix.into() });
            } else if part == "." || part == ".." {
                return Err("dot segments never match a normalised path".into());
            } else {
                segs.push(Seg::Literal(part.into()));
            }
        }
        let literal_prefix = glob.find('*').unwrap_or(glob.len());
        Ok(PathGlob { source: glob.into(), segs, literal_prefix })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Bytes before the first `*`: longer means more specific.
    pub fn literal_prefix_len(&self) -> usize {
        self.literal_prefix
    }

    /// Can some path match both globs? (Used to find tools that tie.)
    pub fn overlaps(&self, other: &PathGlob) -> bool {
        segs_overlap(&self.segs, &other.segs)
    }

    /// Does the normalised path match?
    pub fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let parts: Vec<&str> = rest.split('/').collect();
        match_segs(&self.segs, &parts)
    }
}

fn match_segs(segs: &[Seg], parts: &[&str]) -> bool {
    match segs.split_first() {
        None => parts.is_empty(),
        Some((Seg::Any, rest)) => {
            // `/v1/**` also matches `/v1` and `/v1/`.
            (0..=parts.len()).any(|skip| match_segs(rest, &parts[skip..])) || (rest.is_empty() && parts == [""])
        }
        Some((seg, rest)) => match parts.split_first() {
            None => false,
            Some((part, more)) => seg_matches(seg, part) && match_segs(rest, more),
        },
    }
}

fn segs_overlap(a: &[Seg], b: &[Seg]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((Seg::Any, ra)), _) => segs_overlap(ra, b) || (!b.is_empty() && segs_overlap(a, &b[1..])),
        (_, Some((Seg::Any, rb))) => segs_overlap(a, rb) || (!a.is_empty() && segs_overlap(&a[1..], b)),
        (Some((x, ra)), Some((y, rb))) => seg_pair_overlaps(x, y) && segs_overlap(ra, rb),
        _ => false,
    }
}

fn seg_pair_overlaps(x: &Seg, y: &Seg) -> bool {
    match (x, y) {
        (Seg::Literal(l), other) | (other, Seg::Literal(l)) => seg_matches(other, l),
        (Seg::Wild { prefix: p1, suffix: s1 }, Seg::Wild { prefix: p2, suffix: s2 }) => {
            (p1.starts_with(p2.as_str()) || p2.starts_with(p1.as_str()))
                && (s1.ends_with(s2.as_str()) || s2.ends_with(s1.as_str()))
        }
        _ => true,
    }
}

fn seg_matches(seg: &Seg, part: &str) -> bool {
    match seg {
        Seg::Literal(l) => l == part,
        Seg::Wild { prefix, suffix } => {
            !part.is_empty()
                && part.len() >= prefix.len() + suffix.len()
                && part.starts_with(prefix.as_str())
                && part.ends_with(suffix.as_str())
        }
        Seg::Any => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_dot_segments_and_escapes() {
        assert_eq!(normalize("/a/b/../c/./d").unwrap(), "/a/c/d");
        assert_eq!(normalize("/../../etc").unwrap(), "/etc");
        assert_eq!(normalize("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(normalize("/%7Euser/%41").unwrap(), "/~user/A");
        assert_eq!(normalize("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
        assert_eq!(normalize("/a/..").unwrap(), "/");
        assert_eq!(normalize("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/ünï/x").unwrap(), "/ünï/x");
    }

    #[test]
    fn refuses_dangerous_paths() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%00"), Err(PathError::Nul));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn dot_segments_with_path_parameters_are_refused() {
        for p in [
            "/v1/public/..;/admin/users",
            "/v1/public/..;jsessionid=x/admin",
            "/v1/public/.;/admin",
            "/v1/public/%2e%2e;/admin",
            "/v1/public/%2E%2e;x=1/admin",
            "/v1/public/..%3B/admin",
            "/v1/public/..%3b/admin",
            "/..;",
        ] {
            assert_eq!(normalize(p), Err(PathError::DotSegmentParameter), "{p}");
        }
        // A parameter on an ordinary segment, and dots inside a name, stay allowed.
        assert_eq!(normalize("/v1/items;v=2/x").unwrap(), "/v1/items;v=2/x");
        assert_eq!(normalize("/v1/...;/x").unwrap(), "/v1/...;/x");
        assert_eq!(normalize("/v1/a..;/x").unwrap(), "/v1/a..;/x");
    }

    #[test]
    fn double_encoded_dots_and_separators_are_seen() {
        for p in
            ["/v1/public/%252e%252e/admin", "/v1/a%252Fb", "/v1/a%255Cb", "/x/%252E", "/v1/..%253B/x", "/x/%25252e"]
        {
            let n = normalize(p).unwrap();
            assert!(has_encoded_percent(&n), "{p} -> {n}");
        }
        for p in ["/v1/a%20b", "/v1/plain", "/v1/%C3%A9"] {
            assert!(!has_encoded_percent(&normalize(p).unwrap()), "{p}");
        }
    }

    #[test]
    fn escapes_must_decode_to_utf8() {
        for p in ["/v1/%C0%AE%C0%AE/admin", "/v1/%E0%80%AE", "/v1/%FF", "/v1/%C3"] {
            assert_eq!(normalize(p), Err(PathError::InvalidUtf8), "{p}");
        }
        assert_eq!(normalize("/v1/%C3%A9/%E2%82%AC").unwrap(), "/v1/%C3%A9/%E2%82%AC");
    }

    #[test]
    fn globs() {
        let g = PathGlob::parse("/repos/acme/*/issues").unwrap();
        assert!(g.matches("/repos/acme/x/issues"));
        assert!(!g.matches("/repos/acme/x/y/issues"));
        assert!(!g.matches("/repos/acme//issues"));
        assert_eq!(g.literal_prefix_len(), "/repos/acme/".len());
        let g = PathGlob::parse("/v1/**").unwrap();
        assert!(g.matches("/v1"));
        assert!(g.matches("/v1/"));
        assert!(g.matches("/v1/chat/completions"));
        assert!(!g.matches("/v2/chat"));
        assert!(!g.matches("/v10"));
        let g = PathGlob::parse("/files/*.txt").unwrap();
        assert!(g.matches("/files/a.txt"));
        assert!(!g.matches("/files/a.png"));
        let g = PathGlob::parse("/a/**/z").unwrap();
        assert!(g.matches("/a/z") && g.matches("/a/b/c/z") && !g.matches("/a/b/c"));
        assert!(PathGlob::parse("/a/*").unwrap().overlaps(&PathGlob::parse("/a/b").unwrap()));
        assert!(PathGlob::parse("/a/**").unwrap().overlaps(&PathGlob::parse("/a/b/c").unwrap()));
        assert!(!PathGlob::parse("/a/*").unwrap().overlaps(&PathGlob::parse("/b/*").unwrap()));
        assert!(!PathGlob::parse("/x/*.txt").unwrap().overlaps(&PathGlob::parse("/x/*.png").unwrap()));
        assert!(PathGlob::parse("v1").is_err());
        assert!(PathGlob::parse("/a**").is_err());
        assert!(PathGlob::parse("/a/*b*").is_err());
    }
}
