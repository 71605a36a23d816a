//! The `env` source: a token from an environment variable of the proxy, read once.

use std::time::SystemTime;

use secrecy::SecretString;

use super::refresher::CredCtx;

/// Read the variable and publish it; an unset variable is a failure the control API shows.
pub fn run(var: &str, cx: &CredCtx) {
    match std::env::var(var) {
        Ok(v) => {
            cx.offer(SecretString::from(v), SystemTime::now());
        }
        Err(_) => {
            cx.failure("local_error", &format!("environment variable {var} is not set or not UTF-8"), None);
        }
    }
}
