//! An Azure Blob Storage API on loopback, for backup tests: Azurite (the npm package
//! `azurite`, Microsoft's emulator, which `scripts/bootstrap` installs into `.tools/azurite`
//! from `scripts/azurite/package-lock.json`), one process per [`AzuriteServer`], in memory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use tokio::process::{Child, Command};

use crate::{free_port, http_status};

/// The emulator's one storage account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The emulator's published account key (not a secret: every Azurite has it).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long Azurite may take to listen (node's start included).
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange with the server.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Ports tried when the free port is taken by someone else in the meantime.
const PORT_ATTEMPTS: usize = 3;
/// The REST API version the test kit's own requests name.
const API_VERSION: &str = "2021-08-06";

/// Azure Blob Storage on `http://127.0.0.1:<port>/devstoreaccount1` (path-style, plain
/// HTTP, Shared Key authentication with [`AZURITE_ACCOUNT`] and [`AZURITE_KEY`]), killed on
/// drop. With `object_store`: account name, access key, endpoint [`endpoint`](Self::endpoint)
/// and HTTP allowed. Create containers with [`create_container`](Self::create_container).
#[derive(Debug)]
pub struct AzuriteServer {
    port: u16,
    child: Child,
    /// Azurite's output, quoted when it fails to start.
    log: tempfile::NamedTempFile,
}

impl AzuriteServer {
    /// Starts `azurite-blob` on a free port of 127.0.0.1 and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let program = find_azurite()?;
        let mut attempt = 1;
        loop {
            match Self::start_on(&program, free_port()?).await {
                Ok(server) => return Ok(server),
                Err(e) if attempt < PORT_ATTEMPTS && format!("{e:#}").contains("EADDRINUSE") => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_on(program: &PathBuf, port: u16) -> anyhow::Result<Self> {
        let log = tempfile::Builder::new()
            .prefix("pgfleet-testkit-azurite-")
            .suffix(".log")
            .tempfile()
            .context("creating a log file for azurite")?;
        let stdout = log.reopen().context("opening azurite's log file")?;
        let stderr = log.reopen().context("opening azurite's log file")?;
        let child = Command::new(program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            // In memory (nothing to clean up); object_store names a newer API
            // version than Azurite may know, and sends headers it does not.
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/bootstrap installs azurite into .tools/azurite)",
                    program.display()
                )
            })?;
        let mut server = Self { port, child, log };
        let deadline = tokio::time::Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = server.child.try_wait().context("checking on azurite")? {
                anyhow::bail!(
                    "azurite on port {port} exited ({status}); its log:\n{}",
                    server.log_text()
                );
            }
            // Any HTTP answer (an unsigned request is refused) means it listens.
            if server.request("GET", "/", &[]).await.is_ok() {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "azurite on port {port} did not answer within {READY_LIMIT:?}; its log:\n{}",
                    server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`, the account's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// Creates container `name` (3 to 63 of `[a-z0-9-]`), with a Shared Key signed request.
    pub async fn create_container(&self, name: &str) -> anyhow::Result<()> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        // Verb, eleven empty standard headers, the x-ms-* headers, the resource
        // (path-style: the account twice).
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container",
            "\n".repeat(11)
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .context("decoding the emulator's key")?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).context("an HMAC key")?;
        mac.update(to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let headers = [
            ("x-ms-date", date),
            ("x-ms-version", API_VERSION.to_owned()),
            (
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            ),
        ];
        let status = self
            .request(
                "PUT",
                &format!("/{AZURITE_ACCOUNT}/{name}?restype=container"),
                &headers,
            )
            .await
            .with_context(|| format!("creating container {name} on {}", self.endpoint()))?;
        anyhow::ensure!(
            status == 201,
            "creating container {name} on {}: HTTP {status}; azurite's log:\n{}",
            self.endpoint(),
            self.log_text()
        );
        Ok(())
    }

    /// One request with an empty body; returns the status code.
    async fn request(&self, method: &str, path: &str, headers: &[(&str, String)]) -> anyhow::Result<u16> {
        http_status(self.port, method, path, headers, REQUEST_LIMIT).await
    }
}

/// The checkout's `.tools/azurite/node_modules/.bin/azurite-blob`, then `PATH`.
fn find_azurite() -> anyhow::Result<PathBuf> {
    // This crate lives at crates/pgfleet-testkit of the checkout whose .tools it uses.
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/azurite/node_modules/.bin/azurite-blob");
    if tools.is_file() {
        return Ok(tools);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("azurite-blob"))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "no azurite-blob found (tried {}, PATH): run scripts/bootstrap, which installs \
                 azurite into .tools/azurite",
                tools.display()
            )
        })
}
