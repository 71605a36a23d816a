//! Audit logs back into request events: JSON lines from files (rotated ones and gzip included)
//! or stdin (`-`); other events are passed over, lines that are not JSON objects counted.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{AgentCred, Dest, Event, Kind};

/// A file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ReadError {
    /// The file (`-` for stdin).
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Longest line read; a longer one is counted as skipped (audit lines are far shorter).
const MAX_LINE: usize = 1 << 20;

/// Every request event in `paths`, in order, and the number of lines skipped.
pub fn read_all(paths: &[PathBuf]) -> Result<(Vec<Event>, usize), ReadError> {
    let (mut events, mut skipped) = (Vec::new(), 0);
    for path in paths {
        let err = |source| ReadError { path: path.clone(), source };
        let input: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::fs::File::open(path).map_err(err)?)
        };
        let mut input = BufReader::new(input);
        // gzip by its magic number, whatever the file is called; concatenated members too.
        let gzip = input.fill_buf().map_err(err)?.starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn BufRead> =
            if gzip { Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(input))) } else { Box::new(input) };
        let mut line = Vec::new();
        let mut input = input.take(u64::MAX);
        loop {
            line.clear();
            input.set_limit(MAX_LINE as u64 + 1);
            let n = input.read_until(b'\n', &mut line).map_err(err)?;
            if n == 0 {
                break;
            }
            if line.len() > MAX_LINE && !line.ends_with(b"\n") {
                // Skip the rest of the overlong line without keeping it.
                input.set_limit(u64::MAX);
                loop {
                    let buf = input.fill_buf().map_err(err)?;
                    if buf.is_empty() {
                        break;
                    }
                    match buf.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            input.consume(i + 1);
                            break;
                        }
                        None => {
                            let n = buf.len();
                            input.consume(n);
                        }
                    }
                }
                skipped += 1;
                continue;
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(text) {
                Ok(v @ Value::Object(_)) => events.extend(event(&v)),
                _ => skipped += 1,
            }
        }
    }
    Ok((events, skipped))
}

/// A request event, or `None` for any other event (or one missing what a request event has).
fn event(v: &Value) -> Option<Event> {
    let kind = match v["event"].as_str()? {
        "request.forwarded" => Kind::Forwarded,
        "request.would_deny" => Kind::WouldDeny,
        "request.denied" => Kind::Denied,
        _ => return None,
    };
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    // What the draft policy writes unquoted must be what credproxy writes: a log edited by
    // hand cannot smuggle YAML in through these.
    let scheme = s("scheme").filter(|x| x == "http" || x == "https")?;
    let method = s("method").filter(|m| http::Method::from_bytes(m.as_bytes()).is_ok())?;
    let dest = Dest { scheme, host: s("host")?, port: u16::try_from(v["port"].as_u64()?).ok()? };
    let creds = v["agent_credentials"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let mut field = format!("{} {}", c["in"].as_str()?, c["name"].as_str()?);
            if let Some(scheme) = c["scheme"].as_str().filter(|s| !s.is_empty()) {
                field.push(' ');
                field.push_str(scheme);
            }
            Some(AgentCred { fingerprint: c["fingerprint"].as_str()?.to_owned(), field })
        })
        .collect();
    Some(Event {
        kind,
        ts: s("ts").unwrap_or_default(),
        method,
        dest,
        path: s("path"),
        tool: s("tool"),
        route: v["route"].as_u64().and_then(|r| usize::try_from(r).ok()),
        reason: s("reason"),
        creds,
    })
}

#[cfg(test)]
mod tests {
    use super::event;

    #[test]
    fn only_what_credproxy_writes_is_read_back() {
        let ok =
            r#"{"event":"request.denied","method":"GET","scheme":"https","host":"a.example","port":443,"path":"/x"}"#;
        assert!(event(&serde_json::from_str(ok).unwrap()).is_some());
        for bad in [
            ok.replace(r#""scheme":"https""#, r#""scheme":"http\nevil: {}""#),
            ok.replace(r#""method":"GET""#, r#""method":"GET X""#),
            ok.replace(r#""port":443"#, r#""port":70000"#),
            ok.replace("request.denied", "credential.issued"),
        ] {
            assert!(event(&serde_json::from_str(&bad).unwrap()).is_none(), "{bad}");
        }
    }
}
