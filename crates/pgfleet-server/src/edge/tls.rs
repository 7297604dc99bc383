//! TLS on the gRPC port, served through tokio-rustls rather than tonic's
//! `tls_config`, because tonic fixes its certificate at start while
//! certificates are rotated (cert-manager, Vault) while pgfleet runs.
//!
//! [`ServerTls`] holds the current rustls configuration. The accept loop
//! ([`incoming`]) takes it for every new connection and, every
//! `server.tls.reload_interval`, reads the certificate, key and client CA
//! files again: when their contents changed and still make a valid
//! configuration, new connections get it; open connections keep theirs. A
//! broken rotation (half-written files, a key that does not match) is logged
//! and the previous configuration stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use pgfleet_config::TlsConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// A client that has not finished its handshake by then is dropped, so
/// idle sockets cannot pile up before authentication even starts.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the HTTP/2 server to take them.
const ACCEPTED_BACKLOG: usize = 64;
/// Handshakes in progress at once; past it the accept loop waits (new
/// connections queue in the kernel's backlog) instead of spawning without
/// bound for a flood of clients that never finish their handshake.
const MAX_PENDING_HANDSHAKES: usize = 512;

/// Why the TLS configuration cannot be built. Never holds key material:
/// only paths and what is wrong with them.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no usable PEM private key: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("client CA {}: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },
    #[error("certificate {} and key {} do not make a TLS configuration: {source}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The file contents a configuration was built from, to notice changes.
#[derive(PartialEq, Eq)]
struct Loaded {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The gRPC port's TLS configuration, swappable while serving.
pub struct ServerTls {
    files: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
    loaded: tokio::sync::Mutex<Loaded>,
}

impl ServerTls {
    /// Reads the files and builds the configuration; any problem stops
    /// the server from starting.
    pub async fn load(files: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let loaded = read_files(files).await?;
        let config = build(files, &loaded)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            loaded: tokio::sync::Mutex::new(loaded),
        }))
    }

    /// An acceptor with the configuration in force now.
    fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(current) => Arc::clone(&current),
            // A panic while swapping left a whole Arc behind: still valid.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        TlsAcceptor::from(config)
    }

    /// Reads the files again; when they changed, swaps in the new
    /// configuration. Returns whether it did. On error the old one stays.
    pub async fn reload(&self) -> Result<bool, TlsError> {
        let mut loaded = self.loaded.lock().await;
        let fresh = read_files(&self.files).await?;
        if fresh == *loaded {
            return Ok(false);
        }
        let config = Arc::new(build(&self.files, &fresh)?);
        match self.current.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        *loaded = fresh;
        Ok(true)
    }

    async fn reload_logged(&self) {
        match self.reload().await {
            Ok(true) => tracing::info!(
                cert_file = %self.files.cert_file.display(),
                "TLS certificate files changed: new connections use the new configuration"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "TLS files changed but cannot be used; keeping the previous configuration")
            }
        }
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

async fn read_files(files: &TlsConfig) -> Result<Loaded, TlsError> {
    let client_ca = match &files.client_ca_file {
        Some(path) => Some(read(path).await?),
        None => None,
    };
    Ok(Loaded {
        cert: read(&files.cert_file).await?,
        key: read(&files.key_file).await?,
        client_ca,
    })
}

fn build(files: &TlsConfig, loaded: &Loaded) -> Result<rustls::ServerConfig, TlsError> {
    // Explicit provider: the one tonic and sqlx use, and no dependence on a
    // process-wide default that another crate's features could change.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&loaded.cert)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: files.cert_file.clone(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert_file.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&loaded.key).map_err(|error| TlsError::Key {
        path: files.key_file.clone(),
        message: error.to_string(),
    })?;
    let config_error = |source| TlsError::Config {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        source,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match (&files.client_ca_file, &loaded.client_ca) {
        (Some(path), Some(pem)) => {
            let ca_error = |message: String| TlsError::ClientCa {
                path: path.clone(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|error| ca_error(error.to_string()))?;
                roots.add(cert).map_err(|error| ca_error(error.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_error("holds no PEM certificate".to_owned()));
            }
            // Requires a certificate: a client without one fails the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| ca_error(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(config_error)?;
    // gRPC is HTTP/2; HTTP/1.1 is offered for grpc-web clients reaching
    // the port directly (the server decides whether it accepts them).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Connections from `tcp` after their TLS handshake, for tonic's
/// `serve_with_incoming`. Handshakes run concurrently (a slow client holds
/// up nobody); failed ones are logged and dropped. Stops when the server
/// stops taking connections.
pub fn incoming<S>(
    tcp: S,
    tls: Arc<ServerTls>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>>
where
    S: Stream<Item = Result<TcpStream, std::io::Error>> + Send + 'static,
{
    let (accepted, connections) = mpsc::channel(ACCEPTED_BACKLOG);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        let reload_every = tls.files.reload_interval;
        let mut reload = tokio::time::interval(if reload_every.is_zero() {
            // Never fires in practice; the branch below is disabled anyway.
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            reload_every
        });
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reload.tick().await; // the first tick is immediate; the files were just read
        loop {
            tokio::select! {
                () = accepted.closed() => break,
                _ = reload.tick(), if !reload_every.is_zero() => tls.reload_logged().await,
                next = tcp.next() => match next {
                    None => break,
                    Some(Err(error)) => tracing::warn!(%error, "cannot accept a connection"),
                    Some(Ok(stream)) => {
                        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                            break; // never closed; a closed semaphore would mean shutdown
                        };
                        let acceptor = tls.acceptor();
                        let accepted = accepted.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let peer = stream.peer_addr().ok();
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    // Fails only when the server stopped meanwhile.
                                    let _ = accepted.send(Ok(stream)).await;
                                }
                                Ok(Err(error)) => tracing::debug!(?peer, %error, "TLS handshake failed"),
                                Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                            }
                        });
                    }
                },
            }
        }
    });
    ReceiverStream::new(connections)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost: (cert PEM, key PEM).
    fn self_signed() -> (String, String) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        (issued.cert.pem(), issued.signing_key.serialize_pem())
    }

    #[tokio::test]
    async fn reload_swaps_only_valid_changed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsConfig {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            client_ca_file: None,
            reload_interval: Duration::from_secs(1),
        };
        let write = |cert: &str, key: &str| {
            std::fs::write(&files.cert_file, cert).expect("write cert");
            std::fs::write(&files.key_file, key).expect("write key");
        };
        let (first_cert, first_key) = self_signed();
        write(&first_cert, &first_key);
        let tls = ServerTls::load(&files).await.expect("load");
        assert!(!tls.reload().await.expect("unchanged"), "nothing changed");

        let (second_cert, second_key) = self_signed();
        // Half a rotation: the new certificate with the old key.
        write(&second_cert, &first_key);
        let error = tls.reload().await.expect_err("mismatched key and certificate");
        assert!(matches!(error, TlsError::Config { .. }), "{error}");
        write("not a certificate", &second_key);
        let error = tls.reload().await.expect_err("garbage certificate");
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(!error.to_string().contains("PRIVATE KEY"), "{error}");

        write(&second_cert, &second_key);
        assert!(
            tls.reload().await.expect("valid rotation"),
            "the new pair is taken"
        );
        assert!(!tls.reload().await.expect("unchanged"), "and only once");
    }

    #[tokio::test]
    async fn start_refuses_unreadable_files_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsConfig {
            cert_file: dir.path().join("missing.crt"),
            key_file: dir.path().join("missing.key"),
            client_ca_file: None,
            reload_interval: Duration::ZERO,
        };
        let error = ServerTls::load(&files).await.err().expect("missing files");
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
