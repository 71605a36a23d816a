//! credproxy's own roots never include a pod-local CA, even when `SSL_CERT_FILE` (inherited by
//! credproxy on a laptop) points at a bundle credproxy wrote: the old CA would otherwise be
//! trusted for upstreams and copied into every new bundle. Its own process: the roots load once.

mod common;

use std::time::{Duration, SystemTime};

use common::{pem_certs, TestCa};
use credproxy::tls::ca::{Constraints, PodCa};

#[test]
fn a_pod_ca_among_the_system_roots_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pod = PodCa::generate(
        Constraints { dns: vec!["api.example.test".into()], ips: vec![] },
        SystemTime::now(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let other = TestCa::new();
    let bundle = dir.path().join("bundle.crt");
    std::fs::write(&bundle, format!("{}{}", other.pem(), pod.pem)).unwrap();
    // Set before the roots are first read (once per process), in this test binary's only test.
    unsafe { std::env::set_var("SSL_CERT_FILE", &bundle) };
    unsafe { std::env::remove_var("SSL_CERT_DIR") };
    let roots = credproxy::certs::system_roots();
    let want = pem_certs(&other.pem());
    assert_eq!(roots.certs, want, "only the other CA is trusted");
    assert_eq!(roots.store.roots.len(), 1);
    assert!(!roots.compiled_in);
}
