//! A TCP proxy that fakes network trouble between pgfleet and a "cloud".
//!
//! The mode lives in a watch channel; every connection task selects on its changes (with
//! priority over data), so a switch takes effect at once, not at the next packet, on open
//! connections as well as new ones. Connections the proxy ends abnormally are reset (RST)
//! on both sides, as a dead peer or a firewall would; a side that closes normally has its
//! FIN passed on.

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
    /// A slow link: each direction of each connection forwards at most this many bytes per
    /// second (at least 1), in slices of about 1/20 s worth, with no credit saved up while
    /// idle. Open connections slow down from their next slice.
    Bandwidth(u64),
    /// Forwards until a connection has carried the given number of bytes in a direction,
    /// then resets it (both sides): a peer or a link dying mid-stream, e.g. after N bytes
    /// of query results. Bytes count per connection from the moment this mode reached it:
    /// for connections open at the switch, from the switch; for later ones, from their
    /// start (the startup and authentication exchange included). `None`: no limit in that
    /// direction. Setting the mode again starts the count again.
    CloseAfter {
        /// Client to upstream (queries).
        to_upstream: Option<u64>,
        /// Upstream to client (results).
        to_client: Option<u64>,
    },
}

impl ProxyMode {
    /// The byte budget this mode gives one direction, if any.
    fn byte_limit(self, direction: Direction) -> Option<u64> {
        match (self, direction) {
            (Self::CloseAfter { to_upstream, .. }, Direction::ToUpstream) => to_upstream,
            (Self::CloseAfter { to_client, .. }, Direction::ToClient) => to_client,
            _ => None,
        }
    }
}

/// Which way bytes flow through a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

#[derive(Clone, Copy, Debug)]
struct Control {
    mode: ProxyMode,
    /// Bumped by `reset_connections`: connections accepted under an older epoch close.
    epoch: u64,
    /// Bumped by every `set_mode`, so a connection notices a new mode (and restarts its
    /// byte count and pacing) even when it equals the previous one.
    generation: u64,
}

/// Bytes forwarded by the proxy since it started, all connections together.
#[derive(Debug, Default)]
struct Forwarded {
    to_upstream: AtomicU64,
    to_client: AtomicU64,
}

impl Forwarded {
    fn of(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }
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
    forwarded: Arc<Forwarded>,
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
            generation: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(Forwarded::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Shared {
                upstream: upstream.clone(),
                open: open.clone(),
                forwarded: forwarded.clone(),
            },
            control_rx,
            accepted.clone(),
        ));
        tracing::debug!(%addr, %upstream, "fault proxy listening");
        Ok(Self {
            addr,
            upstream,
            control,
            open,
            accepted,
            forwarded,
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
        self.control.send_modify(|control| {
            control.mode = mode;
            control.generation += 1;
        });
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

    /// Limit each direction of each connection (open and new) to `bytes_per_second`.
    pub fn bandwidth(&self, bytes_per_second: u64) {
        self.set_mode(ProxyMode::Bandwidth(bytes_per_second));
    }

    /// Reset each connection (open and new) once it has carried `to_upstream` bytes
    /// towards the upstream or `to_client` bytes towards the client (counted from now for
    /// open connections); see [`ProxyMode::CloseAfter`].
    pub fn close_after(&self, to_upstream: Option<u64>, to_client: Option<u64>) {
        self.set_mode(ProxyMode::CloseAfter {
            to_upstream,
            to_client,
        });
    }

    /// Reset (RST, both sides) the connections open now, keep the mode and keep accepting
    /// new ones (a server restart or a NAT timeout, as seen from the client).
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

    /// Bytes forwarded from clients to the upstream since the start, all connections
    /// together (written to the upstream socket; held or dropped bytes do not count).
    pub fn bytes_to_upstream(&self) -> u64 {
        self.forwarded.to_upstream.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the upstream to clients since the start, all connections
    /// together.
    pub fn bytes_to_client(&self) -> u64 {
        self.forwarded.to_client.load(Ordering::SeqCst)
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

/// What every connection task of one proxy shares.
#[derive(Clone)]
struct Shared {
    upstream: Arc<str>,
    open: Arc<AtomicUsize>,
    forwarded: Arc<Forwarded>,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Shared,
    mut control: watch::Receiver<Control>,
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
                    let guard = OpenConnection::new(shared.open.clone());
                    tokio::spawn(serve(client, shared.clone(), control.clone(), now, guard));
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
    ByteLimit(Direction),
    ProxyDropped,
}

enum RelayEnd {
    Closed,
    Stopped(Stop),
    Failed(std::io::Error),
}

/// Waits while blackholed; then returns the control in force, or why to stop.
async fn gate(control: &mut watch::Receiver<Control>, epoch: u64) -> Result<Control, Stop> {
    loop {
        let now = *control.borrow_and_update();
        if now.epoch != epoch {
            return Err(Stop::Reset);
        }
        match now.mode {
            ProxyMode::Cut => return Err(Stop::Cut),
            ProxyMode::Blackhole => {
                if control.changed().await.is_err() {
                    return Err(Stop::ProxyDropped);
                }
            }
            ProxyMode::Pass
            | ProxyMode::Latency(_)
            | ProxyMode::Bandwidth(_)
            | ProxyMode::CloseAfter { .. } => return Ok(now),
        }
    }
}

async fn serve(
    mut client: TcpStream,
    shared: Shared,
    mut control: watch::Receiver<Control>,
    at_accept: Control,
    _open: OpenConnection,
) {
    let mut server = match connect_upstream(&shared.upstream, &mut control, at_accept.epoch).await {
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
    let end = relay(&mut client, &mut server, &control, at_accept, &shared.forwarded).await;
    log_end(&end);
    if !matches!(end, RelayEnd::Closed) {
        reset(client);
        reset(server);
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
    at_accept: Control,
    forwarded: &Arc<Forwarded>,
) -> RelayEnd {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let up = pump(
        client_read,
        server_write,
        control.clone(),
        Flow::new(Direction::ToUpstream, at_accept, forwarded.clone()),
    );
    let down = pump(
        server_read,
        client_write,
        control.clone(),
        Flow::new(Direction::ToClient, at_accept, forwarded.clone()),
    );
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

/// The state of one direction of one connection: what it forwarded, under which mode.
struct Flow {
    direction: Direction,
    epoch: u64,
    /// Bytes this direction of this connection has forwarded.
    forwarded: u64,
    /// The mode generation in force, and `forwarded` when this flow first saw it.
    generation: u64,
    forwarded_at_switch: u64,
    /// Bandwidth pacing: bytes sent since `pace_since` (restarted when idle or on a switch).
    pace_since: Instant,
    paced: u64,
    total: Arc<Forwarded>,
}

impl Flow {
    fn new(direction: Direction, at_accept: Control, total: Arc<Forwarded>) -> Self {
        Self {
            direction,
            epoch: at_accept.epoch,
            forwarded: 0,
            // A connection opened under a mode counts from its start.
            generation: at_accept.generation,
            forwarded_at_switch: 0,
            pace_since: Instant::now(),
            paced: 0,
            total,
        }
    }

    /// Waits out a blackhole, notes a mode switch, and returns the mode in force.
    async fn gate(&mut self, control: &mut watch::Receiver<Control>) -> Result<ProxyMode, Stop> {
        let now = gate(control, self.epoch).await?;
        if now.generation != self.generation {
            self.generation = now.generation;
            self.forwarded_at_switch = self.forwarded;
            self.pace_since = Instant::now();
            self.paced = 0;
        }
        Ok(now.mode)
    }

    /// Bytes this direction may still forward under `mode`; `None` without a limit.
    fn budget(&self, mode: ProxyMode) -> Option<u64> {
        let limit = mode.byte_limit(self.direction)?;
        Some(limit.saturating_sub(self.forwarded - self.forwarded_at_switch))
    }

    /// When the next slice may go out under `rate`, and how big it may be. No credit is
    /// saved up: after an idle spell pacing starts again from now.
    fn pace(&mut self, rate: u64, now: Instant) -> (Instant, usize) {
        let rate = rate.max(1);
        let due = self.pace_since + Duration::from_secs_f64(self.paced as f64 / rate as f64);
        let slice = usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX);
        if due < now {
            self.pace_since = now;
            self.paced = 0;
            return (now, slice);
        }
        (due, slice)
    }

    fn wrote(&mut self, len: usize) {
        let len = len as u64;
        self.forwarded += len;
        self.paced += len;
        self.total.of(self.direction).fetch_add(len, Ordering::SeqCst);
    }
}

/// Forwards one direction, chunk by chunk, obeying the mode before every read and write.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    mut control: watch::Receiver<Control>,
    mut flow: Flow,
) -> RelayEnd {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mode = match flow.gate(&mut control).await {
            Ok(mode) => mode,
            Err(stop) => return RelayEnd::Stopped(stop),
        };
        if flow.budget(mode) == Some(0) {
            return RelayEnd::Stopped(Stop::ByteLimit(flow.direction));
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
            let mode = match flow.gate(&mut control).await {
                Ok(mode) => mode,
                Err(stop) => return RelayEnd::Stopped(stop),
            };
            let mut slice = len - written;
            let mut due = arrived;
            match mode {
                ProxyMode::Latency(delay) => due = arrived + delay,
                ProxyMode::Bandwidth(rate) => {
                    let (paced_due, paced_slice) = flow.pace(rate, Instant::now());
                    due = paced_due;
                    slice = slice.min(paced_slice);
                }
                _ => {}
            }
            match flow.budget(mode) {
                Some(0) => return RelayEnd::Stopped(Stop::ByteLimit(flow.direction)),
                Some(budget) => slice = slice.min(usize::try_from(budget).unwrap_or(usize::MAX)),
                None => {}
            }
            let early = Instant::now() < due;
            tokio::select! {
                biased;
                changed = control.changed() => {
                    if changed.is_err() {
                        return RelayEnd::Stopped(Stop::ProxyDropped);
                    }
                }
                () = tokio::time::sleep_until(due), if early => {}
                wrote = writer.write(&buf[written..written + slice]), if !early => match wrote {
                    Ok(0) => return RelayEnd::Failed(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        written += n;
                        flow.wrote(n);
                        // The limit is reached exactly: reset now, not at the next read.
                        if flow.budget(mode) == Some(0) {
                            return RelayEnd::Stopped(Stop::ByteLimit(flow.direction));
                        }
                    }
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
        RelayEnd::Stopped(Stop::ByteLimit(direction)) => {
            tracing::debug!(?direction, "fault proxy connection reached its byte limit")
        }
        RelayEnd::Stopped(why) => tracing::debug!(?why, "fault proxy connection stopped"),
        RelayEnd::Failed(e) => tracing::debug!(error = %e, "fault proxy connection failed"),
    }
}
