//! A real PostgreSQL (Debian's `postgresql`) started with `initdb`/`pg_ctl` on a free loopback port
//! in a temp folder — as `nobody` when the tests run as root, which PostgreSQL refuses to be —
//! with password (SCRAM) authentication over TCP; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SUPERUSER_PASSWORD: &str = "pg-superuser-password";

pub struct Pg {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_nobody: bool,
    _dir: tempfile::TempDir,
}

/// PostgreSQL's programs: `CREDPROXY_PG_BIN`, else Debian's newest `/usr/lib/postgresql/N/bin`.
fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CREDPROXY_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").is_file()).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: run scripts/test (it apt-installs postgresql) or set CREDPROXY_PG_BIN")
    })
}

impl Pg {
    pub async fn start() -> Pg {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        let as_nobody = unsafe { libc::geteuid() } == 0;
        if as_nobody {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        }
        let pw = dir.path().join("pw");
        std::fs::write(&pw, SUPERUSER_PASSWORD).unwrap();
        if as_nobody {
            std::os::unix::fs::chown(&pw, Some(65534), Some(65534)).unwrap();
        }
        let data = dir.path().join("data");
        let mut pg = Pg { port: 0, bin: pg_bin(), data, as_nobody, _dir: dir };
        let init = pg.run(
            "initdb",
            &[
                "-D",
                pg.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--pwfile",
                pw.to_str().unwrap(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
            ],
        );
        assert!(init.status.success(), "initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        // A free port can be taken between the probe and the server's bind: try a few.
        for _ in 0..3 {
            pg.port = super::authority::dead_port().await;
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off",
                pg.port,
                pg.data.display()
            );
            let log = pg.data.join("server.log");
            let start = pg.run(
                "pg_ctl",
                &["-D", pg.data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "30", "start"],
            );
            if start.status.success() {
                return pg;
            }
        }
        panic!(
            "PostgreSQL did not start:\n{}",
            std::fs::read_to_string(pg.data.join("server.log")).unwrap_or_default()
        );
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let prog = self.bin.join(program);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&prog);
            c
        } else {
            Command::new(&prog)
        };
        cmd.args(args).env("LC_ALL", "C").current_dir(self.data.parent().unwrap_or(Path::new("/")));
        cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()))
    }

    /// Vault's connection URL (its `{{username}}`/`{{password}}` templates filled by Vault).
    pub fn vault_url(&self) -> String {
        format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// Log in over TCP as `user` with `password` and run `sql`: the answer, or psql's complaint.
    pub async fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = tokio::process::Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user, "-d", "postgres", "-XAtc", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// As the superuser.
    pub async fn query(&self, sql: &str) -> String {
        self.query_as("postgres", SUPERUSER_PASSWORD, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }
}
