//! Service checks and polling helpers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pgfleet_testkit::{free_port, require_services, require_services_at, wait_until};

#[tokio::test]
async fn local_services_are_reachable() -> anyhow::Result<()> {
    require_services().await
}

#[tokio::test]
async fn unreachable_services_are_named_with_their_env_vars() -> anyhow::Result<()> {
    let dead = free_port()?;
    let err = require_services_at(
        &format!("postgres://postgres:hunter2@127.0.0.1:{dead}/postgres"),
        &format!("redis://127.0.0.1:{dead}"),
    )
    .await
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    for needle in [
        "PostgreSQL at",
        "PGFLEET_TEST_PG_URL",
        "Redis at",
        "PGFLEET_TEST_REDIS_URL",
        ".ci/run",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert!(!err.contains("hunter2"), "password leaked: {err}");
    Ok(())
}

#[tokio::test]
async fn wait_until_polls_until_true() -> anyhow::Result<()> {
    let calls = AtomicU32::new(0);
    wait_until(Duration::from_secs(5), Duration::from_millis(5), async || {
        calls.fetch_add(1, Ordering::SeqCst) >= 3
    })
    .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    Ok(())
}

#[tokio::test]
async fn wait_until_reports_the_last_error() {
    let outcome = wait_until(
        Duration::from_millis(100),
        Duration::from_millis(10),
        async || -> anyhow::Result<bool> { anyhow::bail!("boom") },
    )
    .await;
    let message = outcome.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("boom"), "{message}");
    assert!(message.contains("100ms"), "{message}");
}

#[tokio::test]
async fn wait_until_cuts_off_a_hanging_check() {
    let started = std::time::Instant::now();
    let outcome = wait_until(
        Duration::from_millis(100),
        Duration::from_millis(10),
        async || {
            tokio::time::sleep(Duration::from_secs(60)).await;
            true
        },
    )
    .await;
    assert!(outcome.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}
