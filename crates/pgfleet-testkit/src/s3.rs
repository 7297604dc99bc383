//! An S3-compatible object store on loopback, for backup tests: `moto_server` (the `moto`
//! package from PyPI, which `scripts/bootstrap` installs into `.tools/venv`), one process
//! per [`S3Server`], all in memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::{free_port, http_status};

/// Environment variable naming the `moto_server` executable, when neither
/// `.tools/venv/bin/moto_server` nor one on `PATH` is the right one.
pub const MOTO_SERVER_ENV: &str = "PGFLEET_TEST_MOTO_SERVER";
/// The region clients should sign for; moto serves every region, this is the one tests use.
pub const S3_REGION: &str = "us-east-1";
/// Access key id for clients. moto checks no signatures, but clients insist on signing.
pub const S3_ACCESS_KEY_ID: &str = "pgfleet-test";
/// Secret access key for clients (see [`S3_ACCESS_KEY_ID`]).
pub const S3_SECRET_ACCESS_KEY: &str = "pgfleet-test-secret";

/// How long moto may take to answer its first request (Python imports included).
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange with the server.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Ports tried when the free port is taken by someone else in the meantime.
const PORT_ATTEMPTS: usize = 3;

/// An S3 API on `http://127.0.0.1:<port>` (path-style addressing, plain HTTP, any
/// credentials; buckets and objects in memory), killed on drop.
///
/// Point an S3 client at [`endpoint`](Self::endpoint) with region [`S3_REGION`], access key
/// [`S3_ACCESS_KEY_ID`] / [`S3_SECRET_ACCESS_KEY`], HTTP allowed and path-style requests
/// (with `object_store`: `AmazonS3Builder::new().with_endpoint(..).with_allow_http(true)`,
/// virtual-hosted style is off by default). Create buckets with
/// [`create_bucket`](Self::create_bucket) first.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    child: Child,
    /// moto's request log and errors, quoted when it fails to start.
    log: tempfile::NamedTempFile,
}

impl S3Server {
    /// Starts `moto_server` on a free port of 127.0.0.1 and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let program = find_moto_server()?;
        let mut attempt = 1;
        loop {
            match Self::start_on(&program, free_port()?).await {
                Ok(server) => return Ok(server),
                Err(e) if attempt < PORT_ATTEMPTS && format!("{e:#}").contains("already in use") => {
                    tracing::debug!(error = %format!("{e:#}"), "moto port taken, retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_on(program: &Path, port: u16) -> anyhow::Result<Self> {
        let log = tempfile::Builder::new()
            .prefix("pgfleet-testkit-moto-")
            .suffix(".log")
            .tempfile()
            .context("creating a log file for moto_server")?;
        let stderr = log.reopen().context("opening moto_server's log file")?;
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // No proxy may capture loopback requests moto makes to itself.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/bootstrap installs moto into .tools/venv)",
                    program.display()
                )
            })?;
        let mut server = Self { port, child, log };
        let deadline = tokio::time::Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = server.child.try_wait().context("checking on moto_server")? {
                anyhow::bail!(
                    "moto_server on port {port} exited ({status}); its log tail:\n{}",
                    server.log_tail()
                );
            }
            match server.request("GET", "/").await {
                Ok(200) => return Ok(server),
                Ok(status) => tracing::debug!(status, "moto_server not ready"),
                Err(e) => tracing::trace!(error = %format!("{e:#}"), "moto_server not ready"),
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "moto_server on port {port} did not answer within {READY_LIMIT:?}; its log tail:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.log.path()) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.path().display()),
        }
    }

    /// `http://127.0.0.1:<port>`, the endpoint URL for S3 clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port on 127.0.0.1 (for a [`FaultProxy`](crate::FaultProxy) in front of it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The variables the AWS CLI, SDKs and `object_store`'s `AmazonS3Builder::from_env`
    /// read, set for this server: for a child process (e.g. a pgfleet server under test).
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_REGION", S3_REGION.to_owned()),
            ("AWS_DEFAULT_REGION", S3_REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY.to_owned()),
        ]
    }

    /// Creates bucket `name` (S3 rules: 3 to 63 of `[a-z0-9.-]`, starting and ending with a
    /// letter or digit).
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        check_bucket_name(name)?;
        let status = self
            .request("PUT", &format!("/{name}"))
            .await
            .with_context(|| format!("creating bucket {name} on {}", self.endpoint()))?;
        anyhow::ensure!(
            status == 200,
            "creating bucket {name} on {}: HTTP {status}",
            self.endpoint()
        );
        Ok(())
    }

    /// Kills the server (its data is gone with it): for tests of an unreachable store.
    /// Dropping the server does the same.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if self
            .child
            .try_wait()
            .context("checking on moto_server")?
            .is_none()
        {
            self.child.kill().await.context("killing moto_server")?;
        }
        Ok(())
    }

    /// One unsigned HTTP/1.1 request with an empty body; returns the status code. moto
    /// accepts unsigned requests for bucket administration, so the test kit needs no S3
    /// client of its own.
    async fn request(&self, method: &str, path: &str) -> anyhow::Result<u16> {
        http_status(self.port, method, path, &[], REQUEST_LIMIT).await
    }
}

fn check_bucket_name(name: &str) -> anyhow::Result<()> {
    let edges_ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    anyhow::ensure!(
        (3..=63).contains(&name.len()) && edges_ok && chars_ok,
        "{name:?} is not an S3 bucket name: 3 to 63 of [a-z0-9.-], starting and ending with a letter or digit"
    );
    Ok(())
}

/// `PGFLEET_TEST_MOTO_SERVER`, the checkout's `.tools/venv/bin/moto_server`, then `PATH`.
fn find_moto_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(MOTO_SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "{MOTO_SERVER_ENV}={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    // This crate lives at crates/pgfleet-testkit of the checkout whose .tools it uses.
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/moto_server");
    if tools.is_file() {
        return Ok(tools);
    }
    if let Some(found) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("moto_server"))
        .find(|path| path.is_file())
    {
        return Ok(found);
    }
    anyhow::bail!(
        "no moto_server found (tried {MOTO_SERVER_ENV}, {}, PATH): run scripts/bootstrap, which \
         installs moto into .tools/venv",
        tools.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        let cases = [
            ("backups", true),
            ("pgfleet-backups.1", true),
            ("ab", false),
            ("Upper", false),
            ("-leading", false),
            ("trailing-", false),
            ("space in", false),
            ("crlf\r\nHost: x", false),
        ];
        for (name, ok) in cases {
            assert_eq!(check_bucket_name(name).is_ok(), ok, "case {name:?}");
        }
        assert!(check_bucket_name(&"a".repeat(64)).is_err(), "64 bytes");
    }
}
