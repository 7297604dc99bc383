//! A TCP proxy that fakes network trouble between pgfleet and a "cloud".
//!
//! The mode lives in a watch channel; every connection task selects on its changes (with
//! priority over data), so a switch takes effect at once, not at the next packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything.
    Pass,
    /// The upstream is gone: open connections are reset, new ones are accepted and reset
    /// at once.
    Cut,
    /// A dead network: connections are accepted and held, nothing is forwarded either way
    /// and nothing is closed. Switching back resumes the held connections.
    Blackhole,
    /// Every chunk, in both directions, is held this long before it is forwarded (chunks of
    /// one direction in order, one at a time).
    Latency(Duration),
}

#[derive(Clone, Copy, Debug)]
struct Control {
    mode: ProxyMode,
    /// Bumped by `reset_connections`: connections accepted under an older epoch close.
    epoch: u64,
}

/// A fault-injecting TCP proxy on `127.0.0.1:0` in front of one upstream address, running
/// on the tokio runtime it was started on. Dropping it closes the listener and every
/// connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: Arc<str>,
    control: watch::Sender<Control>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (random port) and forwards to `upstream` (`host:port`), in
    /// [`ProxyMode::Pass`]. The upstream is connected per client connection, so it may be
    /// down when the proxy starts.
    pub async fn start(upstream: impl Into<String>) -> anyhow::Result<Self> {
        let upstream: Arc<str> = upstream.into().into();
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the fault proxy on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("reading the fault proxy's address")?;
        let (control, control_rx) = watch::channel(Control {
            mode: ProxyMode::Pass,
            epoch: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream.clone(),
            control_rx,
            open.clone(),
            accepted.clone(),
        ));
        tracing::debug!(%addr, %upstream, "fault proxy listening");
        Ok(Self {
            addr,
            upstream,
            control,
            open,
            accepted,
            accept_task,
        })
    }

    /// Where clients connect: 127.0.0.1 and [`port`](Self::port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address traffic is forwarded to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.control.borrow().mode
    }

    /// Switches mode; see [`ProxyMode`] for what each does to open and new connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        tracing::debug!(addr = %self.addr, ?mode, "fault proxy mode");
        self.control.send_modify(|control| control.mode = mode);
    }

    /// Forward everything again.
    pub fn pass(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    /// Reset every open connection now and every new one on arrival.
    pub fn cut(&self) {
        self.set_mode(ProxyMode::Cut);
    }

    /// Hold connections (open and new) without forwarding a byte: a dead network.
    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole);
    }

    /// Delay every chunk in both directions by `delay`.
    pub fn latency(&self, delay: Duration) {
        self.set_mode(ProxyMode::Latency(delay));
    }

    /// Reset the connections open now, keep the mode and keep accepting new ones (a server
    /// restart or a NAT timeout, as seen from the client).
    pub fn reset_connections(&self) {
        tracing::debug!(addr = %self.addr, "fault proxy resets its connections");
        self.control.send_modify(|control| control.epoch += 1);
    }

    /// Client connections open right now (including held and closing ones).
    pub fn connection_count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Client connections accepted since the start, refused ones included.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping `control` (right after this) closes the channel, which ends every
        // connection task; the accept loop is also aborted so the port is released.
        self.accept_task.abort();
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Arc<str>,
    mut control: watch::Receiver<Control>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return; // the proxy was dropped
                }
            }
            accept = listener.accept() => match accept {
                Ok((client, peer)) => {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let now = *control.borrow_and_update();
                    if now.mode == ProxyMode::Cut {
                        tracing::debug!(%peer, "fault proxy refuses a connection (cut)");
                        reset(client);
                        continue;
                    }
                    let guard = OpenConnection::new(open.clone());
                    tokio::spawn(serve(client, upstream.clone(), control.clone(), now.epoch, guard));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Why a connection ends other than by both sides closing.
#[derive(Debug)]
enum Stop {
    Cut,
    Reset,
    ProxyDropped,
}

enum RelayEnd {
    Closed,
    Stopped(Stop),
    Failed(std::io::Error),
}

/// Waits while blackholed; then returns the delay to apply to data, or why to stop.
async fn gate(control: &mut watch::Receiver<Control>, epoch: u64) -> Result<Duration, Stop> {
    loop {
        let now = *control.borrow_and_update();
        if now.epoch != epoch {
            return Err(Stop::Reset);
        }
        match now.mode {
            ProxyMode::Pass => return Ok(Duration::ZERO),
            ProxyMode::Latency(delay) => return Ok(delay),
            ProxyMode::Cut => return Err(Stop::Cut),
            ProxyMode::Blackhole => {
                if control.changed().await.is_err() {
                    return Err(Stop::ProxyDropped);
                }
            }
        }
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: Arc<str>,
    mut control: watch::Receiver<Control>,
    epoch: u64,
    _open: OpenConnection,
) {
    let mut server = match connect_upstream(&upstream, &mut control, epoch).await {
        Ok(server) => server,
        Err(end) => {
            log_end(&end);
            reset(client);
            return;
        }
    };
    for stream in [&client, &server] {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "fault proxy cannot set TCP_NODELAY");
        }
    }
    let end = relay(&mut client, &mut server, &control, epoch).await;
    log_end(&end);
    if !matches!(end, RelayEnd::Closed) {
        reset(client);
    }
}

/// Connects to the upstream once the mode allows traffic (a blackhole holds the client
/// without connecting, as a dead network would).
async fn connect_upstream(
    upstream: &str,
    control: &mut watch::Receiver<Control>,
    epoch: u64,
) -> Result<TcpStream, RelayEnd> {
    let connect = TcpStream::connect(upstream);
    tokio::pin!(connect);
    loop {
        gate(control, epoch).await.map_err(RelayEnd::Stopped)?;
        tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return Err(RelayEnd::Stopped(Stop::ProxyDropped));
                }
            }
            server = &mut connect => return server.map_err(RelayEnd::Failed),
        }
    }
}

/// Pumps both directions until both sides have closed, or until one direction stops for
/// another reason, which ends the other too.
async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    control: &watch::Receiver<Control>,
    epoch: u64,
) -> RelayEnd {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let up = pump(client_read, server_write, control.clone(), epoch);
    let down = pump(server_read, client_write, control.clone(), epoch);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            end = &mut up, if !up_done => match end {
                RelayEnd::Closed => up_done = true,
                other => return other,
            },
            end = &mut down, if !down_done => match end {
                RelayEnd::Closed => down_done = true,
                other => return other,
            },
            else => return RelayEnd::Closed,
        }
    }
}

/// Forwards one direction, chunk by chunk, obeying the mode before every read and write.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    mut control: watch::Receiver<Control>,
    epoch: u64,
) -> RelayEnd {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Err(stop) = gate(&mut control, epoch).await {
            return RelayEnd::Stopped(stop);
        }
        let len = tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return RelayEnd::Stopped(Stop::ProxyDropped);
                }
                continue;
            }
            read = reader.read(&mut buf) => match read {
                Ok(0) => {
                    // Pass the half-close on; the other direction may still carry data.
                    if let Err(e) = writer.shutdown().await {
                        tracing::debug!(error = %e, "fault proxy cannot pass a half-close on");
                    }
                    return RelayEnd::Closed;
                }
                Ok(len) => len,
                Err(e) => return RelayEnd::Failed(e),
            },
        };
        let arrived = Instant::now();
        let mut written = 0;
        while written < len {
            let delay = match gate(&mut control, epoch).await {
                Ok(delay) => delay,
                Err(stop) => return RelayEnd::Stopped(stop),
            };
            let due = arrived + delay;
            let early = Instant::now() < due;
            tokio::select! {
                biased;
                changed = control.changed() => {
                    if changed.is_err() {
                        return RelayEnd::Stopped(Stop::ProxyDropped);
                    }
                }
                () = tokio::time::sleep_until(due), if early => {}
                wrote = writer.write(&buf[written..len]), if !early => match wrote {
                    Ok(0) => return RelayEnd::Failed(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) => return RelayEnd::Failed(e),
                },
            }
        }
    }
}

/// Closes with RST rather than FIN, as a dead upstream or a firewall would.
fn reset(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "fault proxy cannot set SO_LINGER; closing with FIN");
    }
}

fn log_end(end: &RelayEnd) {
    match end {
        RelayEnd::Closed => tracing::trace!("fault proxy connection closed"),
        RelayEnd::Stopped(why) => tracing::debug!(?why, "fault proxy connection stopped"),
        RelayEnd::Failed(e) => tracing::debug!(error = %e, "fault proxy connection failed"),
    }
}
