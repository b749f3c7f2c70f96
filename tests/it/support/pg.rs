//! A private PostgreSQL cluster for a test: `initdb` into a temporary directory, `pg_ctl` on a
//! free loopback port, stopped and removed on drop. As root, the cluster runs as the `postgres`
//! user (initdb refuses root). Tests skip where the binaries are missing, unless
//! `TOOLGATE_REQUIRE_POSTGRES=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    opts: String,
    log: String,
    _dir: tempfile::TempDir,
    as_postgres: bool,
}

/// The directory of PostgreSQL's server binaries (Debian keeps them out of PATH).
fn bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Skips (returns None after saying why) or fails under `TOOLGATE_REQUIRE_POSTGRES=1`.
pub fn skip(test: &str, why: &str) -> Option<Cluster> {
    if std::env::var("TOOLGATE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("TOOLGATE_REQUIRE_POSTGRES=1 but {test} cannot run: {why}");
    }
    super::skips::skipped(test, why, super::skips::POSTGRES);
    None
}

impl Cluster {
    /// Starts a cluster with database `toolgate` owned by user `toolgate` (trust auth on
    /// loopback only), or says why it cannot.
    pub fn start(test: &str) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            return skip(
                test,
                "PostgreSQL's initdb is not installed (apt install postgresql)",
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let as_postgres = is_root();
        if as_postgres {
            // The temp dir's parents are traversable; the cluster's own dir must be postgres's.
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status();
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let run = |program: &Path, args: &[&str]| -> Result<(), String> {
            let mut cmd = if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            let out = cmd.args(args).output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        let data_s = data.to_str().unwrap().to_string();
        if let Err(e) = run(
            &bin.join("initdb"),
            &["-D", &data_s, "-U", "toolgate", "-A", "trust", "--no-sync"],
        ) {
            return skip(test, &format!("initdb failed: {e}"));
        }
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("log").to_str().unwrap().to_string();
        if let Err(e) = run(
            &bin.join("pg_ctl"),
            &[
                "-D", &data_s, "-o", &opts, "-l", &log, "-w", "-t", "30", "start",
            ],
        ) {
            return skip(test, &format!("pg_ctl start failed: {e}"));
        }
        let cluster = Cluster {
            url: format!("postgres://toolgate@127.0.0.1:{port}/toolgate"),
            bin,
            data,
            opts,
            log,
            _dir: dir,
            as_postgres,
        };
        let created = Command::new(cluster.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "toolgate",
                "toolgate",
            ])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        Some(cluster)
    }

    /// A directory the test owns (for the seal key replicas share).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Stops the server (the data stays): clients lose their connections.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        self.pg_ctl(&["-o", &self.opts, "-l", &self.log, "-w", "-t", "30", "start"]);
    }

    /// Turns TLS on with this certificate and key (PEM) and restarts the server. Clients may
    /// still connect without TLS (`host` lines in pg_hba), so a test sees which one it got.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        std::fs::write(self.data.join("server.crt"), cert_pem).unwrap();
        let key = self.data.join("server.key");
        std::fs::write(&key, key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_postgres {
            for f in ["server.crt", "server.key"] {
                let _ = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(self.data.join(f))
                    .status();
            }
        }
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
        self.stop();
        self.start_again();
    }

    /// Runs `sql` with psql (without TLS) and returns what it printed, unaligned.
    pub fn psql(&self, sql: &str) -> String {
        let port = self
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(format!(
                "host=127.0.0.1 port={port} user=toolgate dbname=toolgate sslmode=disable"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd.arg("-D").arg(&self.data).args(args).output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}
