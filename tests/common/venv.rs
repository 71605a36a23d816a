//! Programs from the test virtualenv that `scripts/test` builds from tests/requirements.txt
//! (kubectl, kubernetes-validate, Python itself): found beside `$CREDPROXY_PYTHON`, or in the
//! clone's `.venv`, and never skipped when missing.

use std::path::PathBuf;
use std::process::Command;

/// The venv's Python.
pub fn python() -> PathBuf {
    let p = std::env::var_os("CREDPROXY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(p.exists(), "{} is missing: run scripts/test (it creates .venv from tests/requirements.txt)", p.display());
    p
}

/// A console script the venv installed (`kubectl`, `kubernetes-validate`).
pub fn bin(name: &str) -> PathBuf {
    let p = python().with_file_name(name);
    assert!(p.exists(), "{} is missing: run scripts/test (pip install -r tests/requirements.txt)", p.display());
    p
}

/// Run `cmd`, panic with its output unless it succeeds, return its stdout.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Every Kubernetes version `kubernetes-validate` holds schemas for from 1.29 (native sidecars on
/// by default) to the newest it knows.
pub fn kubernetes_versions() -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import kubernetes_validate.utils as u\n\
         vs = sorted(set(u.all_versions()), key=lambda v: tuple(map(int, v.split('.'))))\n\
         print('\\n'.join(v for v in vs if tuple(map(int, v.split('.')))[:2] >= (1, 29)))",
    ]);
    let versions: Vec<String> = run_ok(cmd).lines().map(str::to_string).collect();
    assert!(versions.len() >= 9 && versions[0] == "1.29.0", "kubernetes-validate knows too few versions: {versions:?}");
    versions
}

/// `kubernetes-validate --strict` on `files` for every version of [`kubernetes_versions`].
pub fn validate_strict(files: &[PathBuf]) {
    assert!(!files.is_empty());
    for v in kubernetes_versions() {
        let mut cmd = Command::new(bin("kubernetes-validate"));
        cmd.args(["--strict", "--quiet", "-k", &v]).args(files);
        run_ok(cmd);
    }
}
