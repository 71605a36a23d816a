//! The image: `scripts/image --local` builds deploy/Dockerfile's final stage around this build's
//! binary with podman; its filesystem, taken out with `podman create` + `podman export`, holds
//! only the binary, the libraries it links, CA roots and the user files; its config runs as
//! 65532; and the exported binary, run with the image's own libraries, answers `--version` and
//! `check`. (Containers cannot run on these machines, and the Dockerfile's Rust builder stage
//! needs a base image from a registry: neither is exercised here.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::venv::run_ok;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Removes the image and container however the test ends.
struct Cleanup {
    tag: String,
    container: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.container]).output();
        let _ = Command::new("podman").args(["rmi", "-f", &self.tag]).output();
    }
}

fn files(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            files(&p, base, out);
        } else {
            out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn the_local_image_holds_only_the_binary_and_runs_as_65532() {
    let id = std::process::id();
    let clean = Cleanup { tag: format!("localhost/credproxy-test:{id}"), container: format!("credproxy-test-{id}") };
    let bin = env!("CARGO_BIN_EXE_credproxy");
    let mut build = Command::new(root().join("scripts/image"));
    build.args(["--local", "--binary", bin, "--tag", &clean.tag]);
    run_ok(build);

    let inspect = |format: &str| {
        let mut c = Command::new("podman");
        c.args(["image", "inspect", "--format", format, &clean.tag]);
        run_ok(c).trim().to_string()
    };
    assert_eq!(inspect("{{.Config.User}}"), "65532:65532");
    assert_eq!(inspect("{{.Config.Entrypoint}}"), "[/usr/local/bin/credproxy]");

    let mut create = Command::new("podman");
    create.args(["create", "--name", &clean.container, &clean.tag]);
    run_ok(create);
    let fs = tempfile::tempdir().unwrap();
    let tar = fs.path().join("image.tar");
    let mut export = Command::new("podman");
    export.args(["export", "-o"]).arg(&tar).arg(&clean.container);
    run_ok(export);
    let rootfs = fs.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let mut untar = Command::new("tar");
    untar.arg("-xf").arg(&tar).arg("-C").arg(&rootfs);
    run_ok(untar);

    // Exactly: the binary, the user files, the CA roots, and each library ldd names.
    let mut ldd = Command::new("ldd");
    ldd.arg(bin);
    let libs: BTreeSet<String> = run_ok(ldd)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(|w| w.trim_start_matches('/').to_string())
        .collect();
    let mut want: BTreeSet<String> =
        ["usr/local/bin/credproxy", "etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt"]
            .map(String::from)
            .into();
    want.extend(libs.iter().cloned());
    let mut got = BTreeSet::new();
    files(&rootfs, &rootfs, &mut got);
    // podman adds empty mount points for the runtime's own files.
    got.retain(|f| !matches!(f.as_str(), "etc/hosts" | "etc/resolv.conf" | "etc/hostname" | "run/.containerenv"));
    assert_eq!(got, want, "the image holds only what credproxy needs");
    assert!(!rootfs.join("bin/sh").exists(), "no shell");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    let roots = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(roots.matches("BEGIN CERTIFICATE").count() > 50, "the system's CA roots");

    // The exported binary, run with the image's own loader and libraries.
    let loader = libs.iter().find(|l| l.contains("ld-linux")).expect("a dynamic loader");
    let lib_dirs: BTreeSet<String> =
        libs.iter().map(|l| rootfs.join(Path::new(l).parent().unwrap()).to_string_lossy().into_owned()).collect();
    let run = |args: &[&str]| {
        let mut c = Command::new(rootfs.join(loader));
        c.arg("--library-path").arg(lib_dirs.iter().cloned().collect::<Vec<_>>().join(":"));
        c.arg(rootfs.join("usr/local/bin/credproxy")).args(args).env("POD_NAME", "agent-0").env("HOME", "/nonexistent");
        run_ok(c)
    };
    assert_eq!(run(&["--version"]).trim(), format!("credproxy {}", env!("CARGO_PKG_VERSION")));
    let example = root().join("config/example.yaml");
    assert!(run(&["check", "--config", example.to_str().unwrap()]).starts_with("policy OK"));
    drop(clean);
}
