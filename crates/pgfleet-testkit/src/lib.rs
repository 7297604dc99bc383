//! Real PostgreSQL and Redis for pgfleet's tests: throwaway databases, extra `initdb`
//! clusters that can be killed, serve TLS, carry any `postgresql.conf` settings or stream to
//! replicas, a fault-injecting TCP proxy that fakes cloud outages, an S3-compatible object
//! store on loopback ([`S3Server`]), and test certificate authorities ([`TestCa`]).
//!
//! Nothing here is mocked. A "cloud" is a [`TestDatabase`] on the local server (or a whole
//! [`PgCluster`] when a test needs the server to die, special settings, or a replica), and
//! an outage is a [`FaultProxy`] in front of it switched to `cut`, `blackhole`, `latency`,
//! `bandwidth` or `close_after` (or told to `reset_connections`). The servers come from
//! `PGFLEET_TEST_PG_URL` and `PGFLEET_TEST_REDIS_URL` (default: the local ones); `.ci/run`
//! starts them on a fresh machine. [`fuzz`] runs the fuzz harnesses' proptest cases for a
//! count or a time budget.
//!
//! ```no_run
//! use std::time::Duration;
//! use pgfleet_testkit::{FaultProxy, TestDatabase, wait_until};
//!
//! # async fn example() -> anyhow::Result<()> {
//! pgfleet_testkit::require_services().await?;
//! let db = TestDatabase::create("registry").await?;
//! let proxy = FaultProxy::start(format!("{}:{}", db.host(), db.port())).await?;
//! // Point the code under test at 127.0.0.1:{proxy.port()}, database db.name().
//! proxy.cut(); // the cloud is gone: open connections die, new ones are refused
//! proxy.pass(); // and it is back
//! wait_until(Duration::from_secs(5), Duration::from_millis(50), async || {
//!     proxy.connection_count() == 0
//! })
//! .await?;
//! db.drop_now().await?; // or let Drop remove it
//! # Ok(())
//! # }
//! ```

mod azurite;
mod cluster;
mod database;
pub mod fuzz;
mod proxy;
mod reader;
mod redis;
mod s3;
mod services;
mod tls;

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

pub use azurite::{AZURITE_ACCOUNT, AZURITE_KEY, AzuriteServer};
pub use cluster::{PG_BINDIR_ENV, PgCluster, PgClusterBuilder, ReplayLag};
pub use database::{STALE_AFTER, TestDatabase, sweep_stale_databases};
pub use proxy::{FaultProxy, ProxyMode};
pub use reader::{TEST_READER, TEST_READER_PASSWORD};
pub use redis::RedisServer;
pub use s3::{MOTO_SERVER_ENV, S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY, S3Server};
pub use services::{require_services, require_services_at};
pub use tls::{IssuedCert, TestCa};

/// Environment variable with the admin URL of the PostgreSQL server tests create databases on.
pub const PG_URL_ENV: &str = "PGFLEET_TEST_PG_URL";
/// Environment variable with the URL of the Redis server tests use.
pub const REDIS_URL_ENV: &str = "PGFLEET_TEST_REDIS_URL";
/// Used when [`PG_URL_ENV`] is unset or empty.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Used when [`REDIS_URL_ENV`] is unset or empty.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Admin URL (a superuser, or a role with CREATEDB) of the PostgreSQL server tests use:
/// `PGFLEET_TEST_PG_URL`, else [`DEFAULT_PG_URL`].
pub fn pg_admin_url() -> String {
    env_or(PG_URL_ENV, DEFAULT_PG_URL)
}

/// URL of the Redis server tests use: `PGFLEET_TEST_REDIS_URL`, else [`DEFAULT_REDIS_URL`].
pub fn redis_url() -> String {
    env_or(REDIS_URL_ENV, DEFAULT_REDIS_URL)
}

fn env_or(var: &str, default: &str) -> String {
    match std::env::var_os(var) {
        // A non-UTF-8 value is kept (lossily) so the connection error shows it, rather than
        // quietly testing against the default server.
        Some(value) if !value.is_empty() => value.to_string_lossy().into_owned(),
        _ => default.to_owned(),
    }
}

/// A port on 127.0.0.1 that was free a moment ago. Another process can take it before the
/// caller binds it; callers that start servers retry with a new port on "address in use".
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener
        .local_addr()
        .context("reading the address of a listener on 127.0.0.1:0")?
        .port())
}

/// What a [`wait_until`] condition reports: `bool`, or `Result<bool, E>` whose error is
/// treated as "not yet" and quoted if the wait times out.
pub trait PollOutcome {
    /// `Ok(true)` when the condition holds; `Err` carries why it does not, for the timeout
    /// message.
    fn into_outcome(self) -> Result<bool, String>;
}

impl PollOutcome for bool {
    fn into_outcome(self) -> Result<bool, String> {
        Ok(self)
    }
}

impl<E: Display> PollOutcome for Result<bool, E> {
    fn into_outcome(self) -> Result<bool, String> {
        self.map_err(|e| format!("{e:#}"))
    }
}

/// Polls `condition` every `poll_interval` until it returns true, for at most `timeout`
/// (including the time a slow check takes: each call is cut off at the deadline).
///
/// The error says how long it waited, how many checks ran and what the last one reported.
pub async fn wait_until<F, T>(
    timeout: Duration,
    poll_interval: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> T,
    T: PollOutcome,
{
    let deadline = Instant::now() + timeout;
    let mut checks = 0u32;
    loop {
        checks += 1;
        let last = match tokio::time::timeout_at(deadline, condition()).await {
            Ok(outcome) => match outcome.into_outcome() {
                Ok(true) => return Ok(()),
                Ok(false) => "false".to_owned(),
                Err(e) => format!("error: {e}"),
            },
            Err(_) => "the check itself was still running at the deadline".to_owned(),
        };
        let next = Instant::now() + poll_interval;
        if next >= deadline {
            anyhow::bail!("condition not met within {timeout:?} ({checks} checks); last check: {last}");
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Runs `future` with a deadline, turning a timeout into an error that says what timed out.
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: impl Display,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("{what}: no answer within {limit:?}"),
    }
}

/// One HTTP/1.1 request with an empty body to 127.0.0.1:`port`, bounded by `limit`;
/// returns the status code. The emulators' administration (buckets, containers) needs no
/// HTTP client of the test kit's own.
pub(crate) async fn http_status(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    limit: Duration,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    bounded(limit, format!("{method} {path} on port {port}"), async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response);
        let status_line = response.lines().next().unwrap_or_default();
        status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP response: {status_line:?}"))
    })
    .await
}

/// `url` with any password replaced by `***`, for error messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // set_password only fails for URLs that cannot have one, excluded above.
            if parsed.set_password(Some("***")).is_ok() {
                parsed.to_string()
            } else {
                "<url with password>".to_owned()
            }
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// Decodes `%XX` escapes in a URL component (user names and passwords).
pub(crate) fn percent_decode(component: &str) -> anyhow::Result<String> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("bad percent escape at byte {i} of a URL component"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("URL component is not UTF-8 after percent-decoding")
}

/// Checks that `name` can be used unquoted as a PostgreSQL identifier, so DDL built from it
/// needs no escaping: `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub(crate) fn check_identifier(name: &str, what: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !starts_well || !rest_ok || name.len() > 63 {
        anyhow::bail!(
            "{what} {name:?} is not a plain PostgreSQL identifier: use [a-z_][a-z0-9_]*, at most 63 bytes"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        let cases = [
            ("postgres://u:secret@h:1/db", "postgres://u:***@h:1/db"),
            ("postgres://u@h:1/db", "postgres://u@h:1/db"),
            ("redis://:pw@h:6379", "redis://:***@h:6379"),
            ("not a url", "<unparsable url>"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "case {input}");
        }
    }

    #[test]
    fn decodes_percent_escapes() {
        let cases = [("a%40b", Some("a@b")), ("plain", Some("plain")), ("bad%4", None)];
        for (input, want) in cases {
            assert_eq!(percent_decode(input).ok().as_deref(), want, "case {input}");
        }
    }

    #[test]
    fn identifiers() {
        let cases = [
            ("orders", true),
            ("_x1", true),
            ("1x", false),
            ("Upper", false),
            ("semi;colon", false),
            ("", false),
        ];
        for (name, ok) in cases {
            assert_eq!(check_identifier(name, "name").is_ok(), ok, "case {name:?}");
        }
        assert!(check_identifier(&"a".repeat(64), "name").is_err(), "64 bytes");
    }
}
