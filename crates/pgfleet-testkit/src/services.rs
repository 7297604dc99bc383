//! Reaching the PostgreSQL and Redis servers the tests run against, with errors that say
//! which one is missing and how to start it.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::{PG_URL_ENV, REDIS_URL_ENV, bounded, percent_decode, pg_admin_url, redact_url, redis_url};

/// How long a reachability check or an admin connection may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Checks that the test PostgreSQL ([`pg_admin_url`]) and Redis ([`redis_url`]) answer.
///
/// Call it first in tests that need both: the error names each unreachable server, its URL,
/// the environment variable that sets it, and how to start it.
pub async fn require_services() -> anyhow::Result<()> {
    require_services_at(&pg_admin_url(), &redis_url()).await
}

/// [`require_services`] against explicit URLs.
pub async fn require_services_at(pg_url: &str, redis_url: &str) -> anyhow::Result<()> {
    let (pg, redis) = tokio::join!(check_postgres(pg_url), check_redis(redis_url));
    let mut problems = Vec::new();
    if let Err(e) = pg {
        problems.push(format!(
            "PostgreSQL at {} (set by {PG_URL_ENV}) is not reachable: {e:#}\n  \
             start it with `service postgresql start` (Debian), or point {PG_URL_ENV} at a running server",
            redact_url(pg_url)
        ));
    }
    if let Err(e) = redis {
        problems.push(format!(
            "Redis at {} (set by {REDIS_URL_ENV}) is not reachable: {e:#}\n  \
             start it with `service redis-server start` or `redis-server --daemonize yes`, or point {REDIS_URL_ENV} at a running server",
            redact_url(redis_url)
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "pgfleet tests need real PostgreSQL and Redis:\n- {}\n`.ci/run` installs and starts both on a fresh machine.",
        problems.join("\n- ")
    )
}

async fn check_postgres(url: &str) -> anyhow::Result<()> {
    let mut conn = connect_admin(url).await?;
    let one: i32 = bounded(CONNECT_LIMIT, "SELECT 1", async {
        Ok(sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?)
    })
    .await?;
    anyhow::ensure!(one == 1, "SELECT 1 returned {one}");
    close_quietly(conn).await;
    Ok(())
}

/// Opens one connection to a PostgreSQL server for administration (CREATE/DROP DATABASE),
/// bounded in time; the error names the (redacted) URL and the env var that sets the default.
pub(crate) async fn connect_admin(url: &str) -> anyhow::Result<PgConnection> {
    let shown = redact_url(url);
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("{shown} is not a valid PostgreSQL URL"))?;
    bounded(CONNECT_LIMIT, format!("connecting to {shown}"), async {
        PgConnection::connect_with(&options).await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {shown} (the test server comes from {PG_URL_ENV}; \
                 `.ci/run` starts one)"
            )
        })
    })
    .await
}

/// Closes an admin connection. A failed goodbye changes nothing for the caller (the socket
/// is gone either way), so it is only logged.
pub(crate) async fn close_quietly(conn: PgConnection) {
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing an admin connection failed");
    }
}

/// PINGs Redis over RESP, authenticating first when the URL carries a password. A raw
/// exchange keeps the testkit off the redis client crate and its features.
async fn check_redis(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).context("not a valid URL")?;
    anyhow::ensure!(
        parsed.scheme() == "redis",
        "only redis:// URLs are checked (got {}://)",
        parsed.scheme()
    );
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(6379);
    let mut commands: Vec<Vec<String>> = Vec::new();
    if let Some(password) = parsed.password() {
        let password = percent_decode(password)?;
        let user = percent_decode(parsed.username())?;
        commands.push(if user.is_empty() {
            vec!["AUTH".to_owned(), password]
        } else {
            vec!["AUTH".to_owned(), user, password]
        });
    }
    commands.push(vec!["PING".to_owned()]);

    bounded(CONNECT_LIMIT, format!("Redis at {host}:{port}"), async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let mut stream = BufReader::new(stream);
        for command in &commands {
            let mut frame = format!("*{}\r\n", command.len());
            for arg in command {
                frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
            stream.get_mut().write_all(frame.as_bytes()).await?;
            let mut reply = String::new();
            stream.read_line(&mut reply).await?;
            let reply = reply.trim_end();
            let verb = command.first().map(String::as_str).unwrap_or_default();
            match (verb, reply) {
                ("AUTH", "+OK") | ("PING", "+PONG") => {}
                (_, "") => anyhow::bail!("connection closed before answering {verb}"),
                (_, r) if r.starts_with("-NOAUTH") => {
                    anyhow::bail!("Redis wants a password; put it in the URL (redis://:password@host:port)")
                }
                (_, r) => anyhow::bail!("unexpected reply to {verb}: {r}"),
            }
        }
        Ok(())
    })
    .await
}
