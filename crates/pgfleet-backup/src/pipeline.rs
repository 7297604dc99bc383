//! The byte work of a backup, streamed end to end in fixed-size buffers:
//!
//! - [`dump`]: `pg_dump`'s stdout → SHA-256 of the raw dump → zstd → age
//!   (X25519 recipients) → SHA-256 of the stored bytes → multipart upload.
//! - [`read_back`]: a stored object → SHA-256 check → (optionally) age
//!   decryption → zstd decompression → a child's stdin (`pg_restore`,
//!   `psql`), hashing the raw dump again on the way.
//!
//! The codecs are blocking `io::Write`/`io::Read` adapters (zstd and age are
//! both streaming), so they run on a blocking thread; the object store side
//! is async. The two meet through a channel of at most [`CHANNEL_CHUNKS`]
//! chunks, so memory stays flat whatever the size of the database.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::BackupError;
use crate::policy::DumpFormat;
use crate::storage::BackupStorage;
use crate::tools::{ConnectionEnv, PgTools};

/// Bytes read from a child (or decoded) at a time.
const READ_BUFFER: usize = 256 * 1024;
/// Chunks in flight between the blocking codec thread and the async side.
pub const CHANNEL_CHUNKS: usize = 4;
/// Bytes of a chunk handed to the uploader.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes of a child's stderr kept for the error message (its tail).
const STDERR_TAIL: usize = 2048;

/// Counters a run reports as progress while it works.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from pg_dump (or, reading back, decoded).
    pub raw_bytes: AtomicU64,
    /// Bytes out of zstd.
    pub compressed_bytes: AtomicU64,
    /// Bytes stored (or, reading back, read from storage).
    pub stored_bytes: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.raw_bytes.load(Ordering::Relaxed),
            self.compressed_bytes.load(Ordering::Relaxed),
            self.stored_bytes.load(Ordering::Relaxed),
        )
    }
}

/// How to encode a dump.
#[derive(Clone)]
pub struct Encoding {
    pub format: DumpFormat,
    pub compression_level: i32,
    /// Empty: stored compressed, not encrypted.
    pub recipients: Vec<age::x25519::Recipient>,
}

/// What a finished dump measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    pub stored_bytes: u64,
    pub raw_sha256: String,
    pub stored_sha256: String,
}

/// Parses age recipients (`age1...`).
pub fn parse_recipients(texts: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            text.parse::<age::x25519::Recipient>().map_err(|_| {
                BackupError::invalid(
                    format!("backup.recipients[{index}]"),
                    "not an age X25519 recipient",
                )
            })
        })
        .collect()
}

/// Runs `pg_dump` on `connection` and streams its output into `key` of
/// `storage`. On any failure (pg_dump's exit, the storage, cancellation)
/// the upload is aborted and nothing is left at `key`.
pub async fn dump(
    tools: &PgTools,
    connection: &ConnectionEnv,
    encoding: Encoding,
    storage: &BackupStorage,
    key: &str,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<Dumped, BackupError> {
    let format = match encoding.format {
        DumpFormat::Custom => "--format=custom",
        DumpFormat::Plain => "--format=plain",
    };
    let mut child = tools
        .command("pg_dump", connection)
        // pg_dump's own compression off: zstd does it, and compressed input
        // would not compress again.
        .args([format, "--compress=0", "--no-password"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| BackupError::FailedPrecondition(format!("cannot start pg_dump: {error}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BackupError::Internal("pg_dump without stdout".to_owned()))?
        .into_owned_fd()
        .map_err(|error| BackupError::Internal(format!("pg_dump's stdout: {error}")))?;
    let stderr = tail_of(child.stderr.take());

    // pg_dump's exit is awaited by a task of its own, which kills it on
    // cancellation or when the upload failed (`stop`).
    let stop = cancel.child_token();
    let (exited, exit) = tokio::sync::oneshot::channel();
    let waiter_stop = stop.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            () = waiter_stop.cancelled() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let _ = exited.send(status);
    });

    let (sender, receiver) = mpsc::channel::<Result<Bytes, BackupError>>(CHANNEL_CHUNKS);
    let encoder_progress = Arc::clone(&progress);
    let encoder = tokio::task::spawn_blocking(move || encode(stdout, &encoding, &sender, encoder_progress));

    // The chunk stream ends with pg_dump's exit: a failed (or killed)
    // pg_dump is the stream's last item, an error, so the upload is aborted
    // and never completes with a partial dump.
    let outcome = futures::stream::once(async move {
        let status = exit.await;
        let stderr = stderr.await.unwrap_or_default();
        match status {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(Err(BackupError::Unavailable(format!(
                "pg_dump failed ({status}): {stderr}"
            )))),
            Ok(Err(error)) => Some(Err(BackupError::Internal(format!(
                "waiting for pg_dump: {error}"
            )))),
            Err(_) => Some(Err(BackupError::Internal("pg_dump's waiter is gone".to_owned()))),
        }
    })
    .filter_map(std::future::ready);
    let chunks = Box::pin(stream_of(receiver).chain(outcome));
    let uploaded = storage.upload(key, chunks).await;
    if uploaded.is_err() {
        stop.cancel();
    }
    let encoded = encoder
        .await
        .map_err(|error| BackupError::Internal(format!("the encoder thread failed: {error}")))?;
    let stored_bytes = uploaded?;
    let mut dumped = encoded?;
    dumped.stored_bytes = stored_bytes;
    Ok(dumped)
}

/// The stream of the encoder's chunks; a failed encode ends it with the error.
fn stream_of(
    mut receiver: mpsc::Receiver<Result<Bytes, BackupError>>,
) -> impl futures::Stream<Item = Result<Bytes, BackupError>> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// The blocking half of [`dump`]: read, hash, compress, encrypt, hash,
/// chunk. Stops with an error when the uploader went away.
fn encode(
    stdout: OwnedFd,
    encoding: &Encoding,
    sender: &mpsc::Sender<Result<Bytes, BackupError>>,
    progress: Arc<Progress>,
) -> Result<Dumped, BackupError> {
    let result = encode_into(stdout, encoding, sender, progress);
    if let Err(error) = &result {
        // The uploader must abort: it sees the error as its last chunk.
        let _ = sender.blocking_send(Err(BackupError::Unavailable(error.to_string())));
    }
    result
}

fn encode_into(
    stdout: OwnedFd,
    encoding: &Encoding,
    sender: &mpsc::Sender<Result<Bytes, BackupError>>,
    progress: Arc<Progress>,
) -> Result<Dumped, BackupError> {
    let io_error = |what: &str, error: io::Error| BackupError::Unavailable(format!("{what}: {error}"));
    let mut input = std::fs::File::from(stdout);
    let sink = ChunkSink {
        sender: sender.clone(),
        buffer: Vec::with_capacity(CHUNK_BYTES),
        hasher: Sha256::new(),
        progress: Arc::clone(&progress),
    };
    let encrypted: Box<dyn FinishWrite> = if encoding.recipients.is_empty() {
        Box::new(Plain(sink))
    } else {
        let encryptor =
            age::Encryptor::with_recipients(encoding.recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|error| BackupError::Internal(format!("age: {error}")))?;
        Box::new(Encrypted(
            encryptor
                .wrap_output(sink)
                .map_err(|error| io_error("starting encryption", error))?,
        ))
    };
    let counted = Counting {
        inner: encrypted,
        progress: Arc::clone(&progress),
        count: 0,
    };
    let mut compressor = zstd::stream::Encoder::new(counted, encoding.compression_level)
        .map_err(|error| io_error("starting zstd", error))?;
    // A frame checksum: a corrupted unencrypted backup fails decompression
    // too, not only the stored SHA-256.
    compressor
        .include_checksum(true)
        .map_err(|error| io_error("starting zstd", error))?;
    let mut raw_hasher = Sha256::new();
    let mut raw_bytes = 0_u64;
    let mut buffer = vec![0_u8; READ_BUFFER];
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_error("reading pg_dump's output", error)),
        };
        let bytes = &buffer[..read];
        raw_hasher.update(bytes);
        raw_bytes += read as u64;
        progress.raw_bytes.store(raw_bytes, Ordering::Relaxed);
        compressor
            .write_all(bytes)
            .map_err(|error| io_error("compressing", error))?;
    }
    let counted = compressor
        .finish()
        .map_err(|error| io_error("compressing", error))?;
    let compressed_bytes = counted.count;
    let sink = counted
        .inner
        .finish()
        .map_err(|error| io_error("encrypting", error))?;
    let stored_sha256 = sink.close()?;
    Ok(Dumped {
        raw_bytes,
        compressed_bytes,
        stored_bytes: 0,
        raw_sha256: hex(&raw_hasher.finalize()),
        stored_sha256,
    })
}

/// A writer that is finished explicitly, giving back the chunk sink.
trait FinishWrite: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<ChunkSink>;
}

struct Plain(ChunkSink);
impl Write for Plain {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl FinishWrite for Plain {
    fn finish(self: Box<Self>) -> io::Result<ChunkSink> {
        Ok(self.0)
    }
}

struct Encrypted(age::stream::StreamWriter<ChunkSink>);
impl Write for Encrypted {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl FinishWrite for Encrypted {
    fn finish(self: Box<Self>) -> io::Result<ChunkSink> {
        self.0.finish()
    }
}

/// Counts the bytes written through it (zstd's output).
struct Counting<W> {
    inner: W,
    progress: Arc<Progress>,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.count += written as u64;
        self.progress
            .compressed_bytes
            .store(self.count, Ordering::Relaxed);
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The end of the encoding chain: hashes the stored bytes and hands them to
/// the uploader in [`CHUNK_BYTES`] chunks (blocking while the channel is full).
struct ChunkSink {
    sender: mpsc::Sender<Result<Bytes, BackupError>>,
    buffer: Vec<u8>,
    hasher: Sha256,
    progress: Arc<Progress>,
}

impl ChunkSink {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.progress
            .stored_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.sender
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is left; the stored bytes' SHA-256.
    fn close(mut self) -> Result<String, BackupError> {
        self.send_buffer()
            .map_err(|error| BackupError::Unavailable(format!("uploading: {error}")))?;
        Ok(hex(&self.hasher.finalize()))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.hasher.update(bytes);
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = CHUNK_BYTES - self.buffer.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buffer.extend_from_slice(now);
            rest = later;
            if self.buffer.len() == CHUNK_BYTES {
                self.send_buffer()?;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last [`STDERR_TAIL`] bytes of a child's stderr, read as it runs (so
/// the child never blocks on a full pipe).
fn tail_of(stderr: Option<tokio::process::ChildStderr>) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else {
            return String::new();
        };
        let mut tail: Vec<u8> = Vec::new();
        let mut buffer = vec![0_u8; 8192];
        while let Ok(read) = stderr.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            tail.extend_from_slice(&buffer[..read]);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        String::from_utf8_lossy(&tail).trim().to_owned()
    })
}

/// How a stored object is decrypted: `None` when it is not encrypted.
pub type Identities = Option<Arc<Vec<Box<dyn age::Identity + Send + Sync>>>>;

/// Reads age identities from `path` (`AGE-SECRET-KEY-1...` lines).
pub fn read_identities(
    path: &std::path::Path,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, BackupError> {
    let unusable = |reason: String| {
        BackupError::FailedPrecondition(format!("backup.identity_file {}: {reason}", path.display()))
    };
    let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
        .map_err(|error| unusable(error.to_string()))?;
    let identities = file
        .into_identities()
        .map_err(|error| unusable(error.to_string()))?;
    if identities.is_empty() {
        return Err(unusable("holds no identity".to_owned()));
    }
    Ok(identities)
}

/// Reads `key` whole and checks its SHA-256 against `expected`: a corrupted
/// object is refused before anything decodes it.
pub async fn check_stored(
    storage: &BackupStorage,
    key: &str,
    expected: &str,
    progress: &Progress,
) -> Result<(), BackupError> {
    let mut chunks = storage.read(key).await?;
    let mut hasher = Sha256::new();
    let mut read = 0_u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        read += chunk.len() as u64;
        progress.stored_bytes.store(read, Ordering::Relaxed);
        hasher.update(&chunk);
    }
    let actual = hex(&hasher.finalize());
    if actual != expected {
        return Err(BackupError::FailedPrecondition(format!(
            "{key} is corrupted: its SHA-256 is {actual}, the manifest says {expected}"
        )));
    }
    Ok(())
}

/// Checks that `identities` open `key`'s age header (reading only its first
/// chunks): a wrong key is refused before any target is touched.
pub async fn check_key(
    storage: &BackupStorage,
    key: &str,
    identities: &Identities,
) -> Result<(), BackupError> {
    let Some(identities) = identities.clone() else {
        return Ok(());
    };
    let receiver = feed(storage, key).await?;
    tokio::task::spawn_blocking(move || {
        let reader = io::BufReader::new(ChannelReader::new(receiver));
        open_decryption(reader, &identities).map(drop)
    })
    .await
    .map_err(|error| BackupError::Internal(format!("the decoder thread failed: {error}")))?
}

fn open_decryption<R: io::BufRead>(
    reader: R,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<age::stream::StreamReader<R>, BackupError> {
    let decryptor = age::Decryptor::new_buffered(reader).map_err(|error| {
        BackupError::FailedPrecondition(format!("the backup is not an age file pgfleet can read: {error}"))
    })?;
    decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => BackupError::FailedPrecondition(
                "wrong key: backup.identity_file holds no key this backup was encrypted to".to_owned(),
            ),
            other => BackupError::FailedPrecondition(format!("cannot decrypt the backup: {other}")),
        })
}

/// The stored object's chunks through a bounded channel, read by a task.
async fn feed(
    storage: &BackupStorage,
    key: &str,
) -> Result<mpsc::Receiver<Result<Bytes, BackupError>>, BackupError> {
    let mut chunks = storage.read(key).await?;
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        while let Some(chunk) = chunks.next().await {
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(receiver)
}

/// What decoding a stored object measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub raw_bytes: u64,
    pub raw_sha256: String,
}

/// Streams `key` decoded (decrypted with `identities`, decompressed) into the
/// stdin of `command`, and waits for it. With `reads_all` false the child may
/// stop reading early (`pg_restore --list` reads the table of contents
/// only): the rest is still decoded and hashed, just not written.
///
/// The child's stdin is closed only once the whole dump decoded and its
/// SHA-256 is `raw_sha256`; otherwise the child is killed while its input is
/// still open, so `psql --single-transaction` never reads the end of its
/// input and never commits a dump that is not the one backed up.
#[allow(clippy::too_many_arguments)] // one decode: where from, the key, the expected hash, where to
pub async fn decode_into(
    storage: &BackupStorage,
    key: &str,
    identities: Identities,
    raw_sha256: &str,
    mut command: tokio::process::Command,
    reads_all: bool,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<Decoded, BackupError> {
    let receiver = feed(storage, key).await?;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            BackupError::FailedPrecondition(format!("cannot start the restore program: {error}"))
        })?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| BackupError::Internal("child without stdin".to_owned()))?
        .into_owned_fd()
        .map_err(|error| BackupError::Internal(format!("child's stdin: {error}")))?;
    // The decoder's copy closes when it returns, whatever happened; this one
    // keeps the child's input open until the dump is known to be whole.
    let held_stdin = stdin
        .try_clone()
        .map_err(|error| BackupError::Internal(format!("child's stdin: {error}")))?;
    let stderr = tail_of(child.stderr.take());
    let decoder_cancel = cancel.clone();
    let mut decoder = tokio::task::spawn_blocking(move || {
        decode(receiver, identities, stdin, reads_all, &progress, &decoder_cancel)
    });
    let decoded = tokio::select! {
        decoded = &mut decoder => decoded,
        () = cancel.cancelled() => {
            let _ = child.start_kill();
            (&mut decoder).await
        }
    }
    .map_err(|error| BackupError::Internal(format!("the decoder thread failed: {error}")))
    .and_then(|decoded| decoded)
    .and_then(|decoded| {
        if decoded.raw_sha256 == raw_sha256 {
            Ok(decoded)
        } else {
            Err(BackupError::FailedPrecondition(format!(
                "the backup decodes to a dump whose SHA-256 is {}, the manifest says {raw_sha256}",
                decoded.raw_sha256
            )))
        }
    });
    let mut held_stdin = Some(held_stdin);
    if decoded.is_ok() {
        held_stdin = None;
    } else {
        let _ = child.start_kill();
    }
    let status = child.wait().await;
    // A failed decode's child is gone only now: its input may close.
    drop(held_stdin);
    let status =
        status.map_err(|error| BackupError::Internal(format!("waiting for the restore program: {error}")))?;
    let stderr = stderr.await.unwrap_or_default();
    let decoded = decoded?;
    if !status.success() {
        return Err(BackupError::Unavailable(format!(
            "the restore program failed ({status}): {stderr}"
        )));
    }
    Ok(decoded)
}

fn decode(
    receiver: mpsc::Receiver<Result<Bytes, BackupError>>,
    identities: Identities,
    stdin: OwnedFd,
    reads_all: bool,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Decoded, BackupError> {
    let reader = io::BufReader::new(ChannelReader::new(receiver));
    let decrypted: Box<dyn Read> = match &identities {
        Some(identities) => Box::new(open_decryption(reader, identities)?),
        None => Box::new(reader),
    };
    let mut decompressor = zstd::stream::Decoder::new(decrypted)
        .map_err(|error| BackupError::FailedPrecondition(format!("not a zstd stream: {error}")))?;
    let mut output = Some(std::fs::File::from(stdin));
    let mut hasher = Sha256::new();
    let mut raw_bytes = 0_u64;
    let mut buffer = vec![0_u8; READ_BUFFER];
    loop {
        if cancel.is_cancelled() {
            return Err(BackupError::Unavailable("cancelled".to_owned()));
        }
        let read = match decompressor.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(BackupError::FailedPrecondition(format!(
                    "the backup cannot be decoded: {error}"
                )));
            }
        };
        let bytes = &buffer[..read];
        hasher.update(bytes);
        raw_bytes += read as u64;
        progress.raw_bytes.store(raw_bytes, Ordering::Relaxed);
        if let Some(out) = output.as_mut() {
            match out.write_all(bytes) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe && !reads_all => output = None,
                Err(error) => {
                    return Err(BackupError::Unavailable(format!(
                        "the restore program stopped reading: {error}"
                    )));
                }
            }
        }
    }
    drop(output);
    Ok(Decoded {
        raw_bytes,
        raw_sha256: hex(&hasher.finalize()),
    })
}

/// A blocking `Read` over the chunks of a channel.
struct ChannelReader {
    receiver: mpsc::Receiver<Result<Bytes, BackupError>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(receiver: mpsc::Receiver<Result<Bytes, BackupError>>) -> Self {
        Self {
            receiver,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(io::Error::other(error.to_string())),
            }
        }
        let n = buffer.len().min(self.current.len());
        buffer[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
