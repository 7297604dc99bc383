//! The fault proxy in front of the real test PostgreSQL and of a TCP echo server: pass, cut,
//! blackhole, latency, bandwidth, close after N bytes, reset, byte counts, drop.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use pgfleet_testkit::{FaultProxy, ProxyMode, pg_admin_url, wait_until};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Long enough for a local round trip, short enough to keep the suite quick.
const SHORT: Duration = Duration::from_millis(400);
/// Bound on anything that should fail or succeed promptly, so a bug hangs no test.
const PROMPT: Duration = Duration::from_secs(5);

async fn proxy() -> anyhow::Result<(FaultProxy, PgConnectOptions)> {
    let admin = PgConnectOptions::from_str(&pg_admin_url())?;
    let proxy = FaultProxy::start(format!("{}:{}", admin.get_host(), admin.get_port())).await?;
    let through = admin.host("127.0.0.1").port(proxy.port());
    Ok((proxy, through))
}

async fn connect(options: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    Ok(tokio::time::timeout(PROMPT, PgConnection::connect_with(options)).await??)
}

async fn select_one(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(conn).await
}

#[tokio::test]
async fn passes_traffic_and_counts_connections() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut conn = connect(&options).await?;
    assert_eq!(select_one(&mut conn).await?, 1);
    assert_eq!(proxy.connection_count(), 1);
    assert_eq!(proxy.accepted_count(), 1);

    conn.close().await?;
    wait_until(PROMPT, Duration::from_millis(20), async || {
        proxy.connection_count() == 0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn cut_breaks_live_and_new_connections_and_pass_recovers() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut live = connect(&options).await?;
    assert_eq!(select_one(&mut live).await?, 1);

    proxy.cut();
    let after_cut = tokio::time::timeout(PROMPT, select_one(&mut live)).await?;
    assert!(after_cut.is_err(), "query on a cut connection: {after_cut:?}");
    let new = tokio::time::timeout(PROMPT, PgConnection::connect_with(&options)).await?;
    assert!(new.is_err(), "connecting through a cut proxy succeeded");
    wait_until(PROMPT, Duration::from_millis(20), async || {
        proxy.connection_count() == 0
    })
    .await?;

    proxy.pass();
    let mut again = connect(&options).await?;
    assert_eq!(select_one(&mut again).await?, 1);
    Ok(())
}

#[tokio::test]
async fn blackhole_hangs_traffic_until_pass() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut live = connect(&options).await?;

    proxy.blackhole();
    let mut stuck = tokio::spawn(async move {
        let one = select_one(&mut live).await;
        (one, live)
    });
    assert!(
        tokio::time::timeout(SHORT, &mut stuck).await.is_err(),
        "a query answered through a blackhole"
    );
    assert!(
        tokio::time::timeout(SHORT, PgConnection::connect_with(&options))
            .await
            .is_err(),
        "a connect finished through a blackhole"
    );
    // Held, not closed: the first connection is still counted.
    assert!(proxy.connection_count() >= 1);

    // The network comes back: the held query completes.
    proxy.pass();
    let (one, _live) = tokio::time::timeout(PROMPT, stuck).await??;
    assert_eq!(one?, 1);
    Ok(())
}

#[tokio::test]
async fn latency_delays_round_trips() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut conn = connect(&options).await?;
    let delay = Duration::from_millis(150);

    proxy.latency(delay);
    assert_eq!(proxy.mode(), ProxyMode::Latency(delay));
    let started = Instant::now();
    assert_eq!(select_one(&mut conn).await?, 1);
    let took = started.elapsed();
    assert!(took >= delay, "a query took {took:?} with {delay:?} latency");
    Ok(())
}

#[tokio::test]
async fn reset_connections_closes_open_ones_only() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut old = connect(&options).await?;
    assert_eq!(select_one(&mut old).await?, 1);

    proxy.reset_connections();
    let after = tokio::time::timeout(PROMPT, select_one(&mut old)).await?;
    assert!(after.is_err(), "query on a reset connection: {after:?}");
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut new = connect(&options).await?;
    assert_eq!(select_one(&mut new).await?, 1);
    Ok(())
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut conn = connect(&options).await?;
    drop(proxy);
    let after = tokio::time::timeout(PROMPT, select_one(&mut conn)).await?;
    assert!(after.is_err(), "query through a dropped proxy: {after:?}");
    wait_until(PROMPT, Duration::from_millis(20), async || {
        tokio::time::timeout(SHORT, PgConnection::connect_with(&options))
            .await
            .is_ok_and(|connected| connected.is_err())
    })
    .await?;
    Ok(())
}

/// How an echo server's side of one connection ended.
#[derive(Debug, PartialEq)]
struct EchoEnd {
    received: u64,
    /// `None` for a normal close (FIN), else the error kind (a reset).
    error: Option<std::io::ErrorKind>,
}

/// A TCP echo server on 127.0.0.1 that reports how each connection ended.
async fn echo_server() -> anyhow::Result<(std::net::SocketAddr, mpsc::UnboundedReceiver<EchoEnd>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (ends, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let ends = ends.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut received = 0u64;
                let error = loop {
                    match socket.read(&mut buf).await {
                        Ok(0) => break None,
                        Ok(n) => {
                            received += n as u64;
                            if let Err(e) = socket.write_all(&buf[..n]).await {
                                break Some(e.kind());
                            }
                        }
                        Err(e) => break Some(e.kind()),
                    }
                };
                // The test may be done listening: nothing to do about it.
                let _ = ends.send(EchoEnd { received, error });
            });
        }
    });
    Ok((addr, ended))
}

async fn echo_proxy() -> anyhow::Result<(FaultProxy, mpsc::UnboundedReceiver<EchoEnd>)> {
    let (addr, ended) = echo_server().await?;
    Ok((FaultProxy::start(addr.to_string()).await?, ended))
}

async fn connect_tcp(proxy: &FaultProxy) -> anyhow::Result<TcpStream> {
    Ok(tokio::time::timeout(PROMPT, TcpStream::connect(proxy.addr())).await??)
}

/// Reads until the peer closes or fails: the bytes that arrived and how it ended.
async fn read_to_end(stream: &mut TcpStream) -> anyhow::Result<(usize, Option<std::io::ErrorKind>)> {
    let mut total = 0;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(PROMPT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok((total, None)),
                Ok(n) => total += n,
                Err(e) => return Ok((total, Some(e.kind()))),
            }
        }
    })
    .await?
}

async fn next_end(ended: &mut mpsc::UnboundedReceiver<EchoEnd>) -> anyhow::Result<EchoEnd> {
    tokio::time::timeout(PROMPT, ended.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the echo server stopped"))
}

/// Sends `len` bytes and reads them back, through the proxy.
async fn round_trip(stream: &mut TcpStream, len: usize) -> anyhow::Result<()> {
    let sent = vec![7u8; len];
    let (mut reader, mut writer) = stream.split();
    let mut back = vec![0u8; len];
    tokio::time::timeout(PROMPT, async {
        tokio::try_join!(writer.write_all(&sent), reader.read_exact(&mut back))
    })
    .await??;
    anyhow::ensure!(back == sent, "echo changed the bytes");
    Ok(())
}

#[tokio::test]
async fn counts_bytes_in_each_direction() -> anyhow::Result<()> {
    let (proxy, mut ended) = echo_proxy().await?;
    let mut stream = connect_tcp(&proxy).await?;
    round_trip(&mut stream, 1234).await?;
    assert_eq!((proxy.bytes_to_upstream(), proxy.bytes_to_client()), (1234, 1234));
    stream.write_all(b"12345").await?;
    stream.shutdown().await?;
    let (back, how) = read_to_end(&mut stream).await?;
    assert_eq!(
        (back, how),
        (5, None),
        "a half-close passes on, then a normal close"
    );
    assert_eq!(
        next_end(&mut ended).await?,
        EchoEnd {
            received: 1239,
            error: None
        }
    );
    assert_eq!((proxy.bytes_to_upstream(), proxy.bytes_to_client()), (1239, 1239));
    Ok(())
}

#[tokio::test]
async fn reset_connections_sends_rst_both_ways() -> anyhow::Result<()> {
    let (proxy, mut ended) = echo_proxy().await?;
    let mut stream = connect_tcp(&proxy).await?;
    round_trip(&mut stream, 100).await?;

    proxy.reset_connections();
    let (_, how) = read_to_end(&mut stream).await?;
    assert_eq!(how, Some(std::io::ErrorKind::ConnectionReset), "the client side");
    let end = next_end(&mut ended).await?;
    assert_eq!(
        end.error,
        Some(std::io::ErrorKind::ConnectionReset),
        "the upstream side: {end:?}"
    );
    Ok(())
}

#[tokio::test]
async fn close_after_passes_exactly_n_bytes_to_the_client_then_resets() -> anyhow::Result<()> {
    let (proxy, mut ended) = echo_proxy().await?;
    proxy.close_after(None, Some(1000));
    let mut stream = connect_tcp(&proxy).await?;
    stream.write_all(&[1u8; 4096]).await?;
    let (back, how) = read_to_end(&mut stream).await?;
    assert_eq!((back, how), (1000, Some(std::io::ErrorKind::ConnectionReset)));
    assert_eq!(proxy.bytes_to_client(), 1000);
    let end = next_end(&mut ended).await?;
    assert_eq!(
        end.error,
        Some(std::io::ErrorKind::ConnectionReset),
        "the upstream side: {end:?}"
    );
    Ok(())
}

#[tokio::test]
async fn close_after_passes_exactly_n_bytes_to_the_upstream_then_resets() -> anyhow::Result<()> {
    let (proxy, mut ended) = echo_proxy().await?;
    proxy.close_after(Some(100), None);
    let mut stream = connect_tcp(&proxy).await?;
    stream.write_all(&[1u8; 300]).await?;
    let (back, how) = read_to_end(&mut stream).await?;
    assert!(back <= 100, "{back} bytes came back from 100 sent");
    assert_eq!(how, Some(std::io::ErrorKind::ConnectionReset));
    let end = next_end(&mut ended).await?;
    assert_eq!(end.received, 100, "{end:?}");
    assert_eq!(proxy.bytes_to_upstream(), 100);
    Ok(())
}

#[tokio::test]
async fn close_after_counts_open_connections_from_the_switch() -> anyhow::Result<()> {
    let (proxy, _ended) = echo_proxy().await?;
    let mut open = connect_tcp(&proxy).await?;
    round_trip(&mut open, 500).await?;

    proxy.close_after(None, Some(10));
    open.write_all(&[1u8; 100]).await?;
    let (back, how) = read_to_end(&mut open).await?;
    assert_eq!((back, how), (10, Some(std::io::ErrorKind::ConnectionReset)));

    // New connections count from their start; a mode set again starts counting again.
    let mut new = connect_tcp(&proxy).await?;
    new.write_all(&[1u8; 100]).await?;
    assert_eq!(read_to_end(&mut new).await?.0, 10);
    proxy.pass();
    let mut after = connect_tcp(&proxy).await?;
    round_trip(&mut after, 500).await?;
    Ok(())
}

#[tokio::test]
async fn close_after_breaks_a_postgres_result_stream_midway() -> anyhow::Result<()> {
    let (proxy, options) = proxy().await?;
    let mut conn = connect(&options).await?;
    assert_eq!(select_one(&mut conn).await?, 1);

    proxy.close_after(None, Some(4096));
    let big = "SELECT repeat('x', 100) FROM generate_series(1, 1000)";
    let broken = tokio::time::timeout(PROMPT, sqlx::query(big).fetch_all(&mut conn)).await?;
    assert!(
        broken.is_err(),
        "a 100 kB result through a 4 kB allowance: {broken:?}"
    );
    assert!(
        tokio::time::timeout(PROMPT, select_one(&mut conn))
            .await?
            .is_err(),
        "the broken connection still answered"
    );
    proxy.pass();
    let mut again = connect(&options).await?;
    assert_eq!(sqlx::query(big).fetch_all(&mut again).await?.len(), 1000);
    Ok(())
}

#[tokio::test]
async fn bandwidth_slows_open_connections() -> anyhow::Result<()> {
    let (proxy, _ended) = echo_proxy().await?;
    let mut stream = connect_tcp(&proxy).await?;
    let rate = 64 * 1024;
    proxy.bandwidth(rate);
    assert_eq!(proxy.mode(), ProxyMode::Bandwidth(rate));

    // 32 KiB each way at 64 KiB/s: half a second, less the first slice (1/20 s) sent at
    // once; a loose lower bound only.
    let started = Instant::now();
    round_trip(&mut stream, 32 * 1024).await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "32 KiB at 64 KiB/s took {took:?}"
    );

    proxy.pass();
    let started = Instant::now();
    round_trip(&mut stream, 32 * 1024).await?;
    assert!(started.elapsed() < took, "pass is not faster than the limit");
    Ok(())
}
