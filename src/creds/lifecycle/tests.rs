//! The lifecycle's schedule against a scripted source in paused Tokio time (no sockets: paused
//! time auto-advances), with wall-clock jumps through the manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::run;
use crate::audit::Audit;
use crate::clock::Clock;
use crate::config::watch::FsWatch;
use crate::creds::refresher::{supervise, CredCtx};
use crate::creds::source::{Expiry, FetchError, Fetched, Source};
use crate::creds::vault::login::{LoginEnv, Logins};
use crate::creds::{Command, Slot, State};
use crate::metrics::Metrics;
use crate::outbound::Upstreams;
use crate::policy::{Inject, Lifetime, Refresh};

type Script = Box<dyn FnMut(u32) -> Result<Duration, FetchError> + Send>;

/// Answers fetch number n (from 1) with `script(n)`: a token living that long, or an error.
struct Fake {
    script: Script,
    calls: Arc<Mutex<Vec<Instant>>>,
    /// How long each fetch takes.
    delay: Arc<Mutex<Duration>>,
}

impl Source for Fake {
    async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let n = {
            let mut c = self.calls.lock().unwrap();
            c.push(Instant::now());
            c.len() as u32
        };
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let ttl = (self.script)(n)?;
        Ok(Fetched::new(SecretString::from(format!("token-{n}")), Expiry::In(ttl)))
    }
}

struct Rig {
    cx: CredCtx,
    delay: Arc<Mutex<Duration>>,
    calls: Arc<Mutex<Vec<Instant>>>,
    tx: mpsc::Sender<Command>,
    audit_file: tempfile::NamedTempFile,
}

impl Rig {
    fn gaps(&self) -> Vec<f64> {
        let c = self.calls.lock().unwrap();
        c.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    async fn audit(&self) -> String {
        self.cx.audit.flush().await;
        std::fs::read_to_string(self.audit_file.path()).unwrap()
    }
}

fn start(script: Script, life: Lifetime) -> Rig {
    let audit_file = tempfile::NamedTempFile::new().unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel(8);
    let audit = Audit::start(Some(audit_file.path().to_path_buf()), "test", metrics.clone());
    let (watch, clock, upstreams) = (FsWatch::new(), Clock::manual(), Arc::new(Upstreams::new()));
    let env = LoginEnv {
        metrics: metrics.clone(),
        audit: audit.clone(),
        clock: clock.clone(),
        upstreams: upstreams.clone(),
        watch: watch.clone(),
    };
    let cx = CredCtx {
        tool: Arc::from("api"),
        slot: Arc::new(Slot::new("exec", Some(tx.clone()))),
        inject: Inject::Header { name: http::header::AUTHORIZATION, prefix: "Bearer ".into(), suffix: String::new() },
        not_before: None,
        audit,
        metrics,
        watch,
        clock,
        upstreams,
        logins: Logins::new(env),
    };
    let calls = Arc::new(Mutex::new(Vec::new()));
    let delay = Arc::new(Mutex::new(Duration::ZERO));
    let source = Fake { script, calls: calls.clone(), delay: delay.clone() };
    let run_cx = cx.clone();
    tokio::spawn(async move {
        let mut rx = rx;
        run(source, life, Refresh::default(), &run_cx, &mut rx).await;
    });
    Rig { cx, delay, calls, tx, audit_file }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life_with_jitter_and_keeps_serving() {
    let rig = start(Box::new(|_| Ok(secs(100))), Lifetime::default());
    tokio::time::sleep(secs(1000)).await;
    let gaps = rig.gaps();
    assert!(gaps.len() >= 16, "about 1000/50 refreshes, got {}", gaps.len());
    for g in &gaps {
        assert!((40.0..=60.0).contains(g), "refresh gap {g} outside 100 s × (0.5 ± 0.1)");
    }
    // Jitter: not every gap is the same.
    assert!(gaps.iter().any(|g| (g - gaps[0]).abs() > 0.01));
    assert!(rig.cx.slot.usable(rig.cx.clock.now()).is_some());
    let audit = rig.audit().await;
    assert_eq!(audit.matches("credential.issued").count(), 1);
    assert_eq!(audit.matches("credential.refreshed").count(), gaps.len());
    assert!(!audit.contains("token-"), "the audit never holds a token");
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_to_the_cap_without_a_hot_loop() {
    let rig = start(Box::new(|_| Err(FetchError::new("unreachable", "down"))), Lifetime::default());
    tokio::time::sleep(secs(1800)).await;
    let gaps = rig.gaps();
    for (i, g) in gaps.iter().enumerate() {
        let ceiling = 2f64.powi(i as i32).min(60.0);
        assert!(*g >= 1.0 && *g <= ceiling + 0.001, "gap {i} = {g}, ceiling {ceiling}");
    }
    // With the cap at 60 s and full jitter (mean 30 s), half an hour holds tens of attempts, not thousands.
    assert!((20..200).contains(&rig.count()), "{} attempts", rig.count());
    assert_eq!(rig.cx.slot.state(), State::Failing);
    assert_eq!(rig.cx.slot.consecutive_failures() as usize, rig.count());
    let m = rig.cx.metrics.encode();
    assert!(m.contains(r#"credproxy_credential_refresh_errors_total{reason="unreachable",source="exec",tool="api"}"#));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_wait_the_cap() {
    let rig = start(Box::new(|_| Err(FetchError::permanent("invalid_client", "bad secret"))), Lifetime::default());
    // One second after the first refusal, the next attempt is scheduled 59 s ahead: the cap.
    tokio::time::sleep(secs(1)).await;
    assert_eq!(rig.count(), 1);
    let next = rig.cx.slot.next_refresh().expect("a scheduled retry");
    let ahead = next.duration_since(rig.cx.clock.now()).unwrap().as_secs_f64();
    assert!((ahead - 59.0).abs() < 0.01, "next attempt in {ahead} s");
    tokio::time::sleep(secs(599)).await;
    let gaps = rig.gaps();
    assert!(gaps.len() >= 9, "{gaps:?}");
    for g in gaps {
        assert!((g - 60.0).abs() < 0.01, "gap {g}");
    }
    assert!(rig.audit().await.contains(r#""reason":"invalid_client""#));
}

#[tokio::test(start_paused = true)]
async fn margin_empties_the_slot_then_recovers_when_the_authority_returns() {
    // First token lives 20 s (margin: min(5 s, 2 s) = 2 s); the authority is down from fetch 2 to 9.
    let rig = start(
        Box::new(|n| if (2..10).contains(&n) { Err(FetchError::new("unreachable", "down")) } else { Ok(secs(20)) }),
        Lifetime::default(),
    );
    tokio::time::sleep(Duration::from_millis(17_900)).await;
    assert!(rig.cx.slot.usable(rig.cx.clock.now()).is_some(), "served until the margin");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rig.cx.slot.current().is_none(), "slot emptied at expiry − margin");
    assert_eq!(rig.cx.slot.state(), State::Expired);
    // Retries continue (backoff capped at 60 s) until fetch 10 succeeds.
    tokio::time::sleep(secs(600)).await;
    assert!(rig.count() >= 10);
    assert!(rig.cx.slot.usable(rig.cx.clock.now()).is_some(), "recovered by itself");
    let audit = rig.audit().await;
    assert!(audit.contains("credential.expired"));
    assert!(audit.contains(r#""retry_at":"#));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_so_an_attempt_happens_before_the_end() {
    let rig = start(
        Box::new(|n| {
            if n == 1 {
                Ok(secs(100))
            } else {
                let mut e = FetchError::new("rate_limited", "429");
                e.retry_after = Some(secs(3600));
                Err(e)
            }
        }),
        Lifetime::default(),
    );
    tokio::time::sleep(secs(96)).await;
    // Refresh at 40–60 s hit a 429 asking for an hour; the retry still came before 95 s (end − margin).
    assert!(rig.count() >= 3, "{} fetches", rig.count());
}

#[tokio::test(start_paused = true)]
async fn wall_clock_jump_is_noticed_when_the_request_path_asks() {
    let rig = start(Box::new(|_| Ok(secs(3600))), Lifetime::default());
    tokio::time::sleep(secs(1)).await;
    assert_eq!(rig.count(), 1);
    // A laptop sleeps for two hours: monotonic time stood still, wall time did not.
    rig.cx.clock.jump(secs(7200));
    assert!(rig.cx.slot.usable(rig.cx.clock.now()).is_none(), "never inject a token the wall clock says is expired");
    rig.tx.send(Command::Check).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.count(), 2, "a new token is fetched at once");
    assert!(rig.cx.slot.usable(rig.cx.clock.now()).is_some());
}

#[tokio::test(start_paused = true)]
async fn rotate_and_revoke_commands() {
    let rig = start(Box::new(|_| Ok(secs(3600))), Lifetime::default());
    tokio::time::sleep(secs(1)).await;
    let first = rig.cx.slot.current().unwrap().fingerprint.clone();
    rig.tx.send(Command::Refresh { reason: "rotate" }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = rig.cx.slot.current().unwrap().fingerprint.clone();
    assert_ne!(first, second);
    rig.tx.send(Command::Revoke { reason: "api" }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(rig.count(), 3, "revoking fetches a new token at once");
    assert_ne!(rig.cx.slot.current().unwrap().fingerprint, second);
    let audit = rig.audit().await;
    assert!(audit.contains(r#""event":"credential.revoked""#) && audit.contains(r#""reason":"api""#));
    assert!(rig.cx.metrics.encode().contains(r#"credproxy_credential_revocations_total{reason="api",tool="api"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_is_restarted_and_counted() {
    let rig = start(Box::new(|_| Ok(secs(3600))), Lifetime::default());
    let runs = Arc::new(Mutex::new(0u32));
    let (cx, r) = (rig.cx.clone(), runs.clone());
    let _task = supervise(cx, move || {
        let r = r.clone();
        async move {
            let n = {
                let mut g = r.lock().unwrap();
                *g += 1;
                *g
            };
            if n < 3 {
                panic!("injected panic {n}");
            }
        }
    });
    tokio::time::sleep(secs(5)).await;
    assert_eq!(*runs.lock().unwrap(), 3);
    assert!(rig.cx.metrics.encode().contains(r#"credproxy_credential_task_restarts_total{tool="api"} 2"#));
}

#[tokio::test(start_paused = true)]
async fn revoke_during_a_slow_fetch_drops_the_token_at_once() {
    let rig = start(Box::new(|_| Ok(secs(3600))), Lifetime::default());
    tokio::time::sleep(secs(1)).await;
    *rig.delay.lock().unwrap() = secs(8);
    rig.tx.send(Command::Refresh { reason: "rotate" }).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    assert!(rig.cx.slot.current().is_some(), "the old token serves while the new one is fetched");
    rig.tx.send(Command::Revoke { reason: "api" }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(rig.cx.slot.current().is_none(), "revoked at once, not after the fetch");
    let calls = rig.count();
    tokio::time::sleep(secs(10)).await;
    assert!(rig.cx.slot.current().is_none(), "what the fetch under way brought is dropped: it may be the revoked one");
    assert_eq!(rig.count(), calls + 1, "and a new fetch starts at once");
    tokio::time::sleep(secs(10)).await;
    assert!(rig.cx.slot.usable(rig.cx.clock.now()).is_some(), "which publishes");
}
