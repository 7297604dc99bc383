//! What the benchmarks share: the real server over throwaway databases, a
//! user of a given role created straight in the history store, logged in.

use std::path::Path;

use anyhow::Context as _;
use pgfleet_config::{FileFormat, Inputs, LoadedConfig, ProcessEnv};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::auth_service_client::AuthServiceClient;
use pgfleet_server::app::RunningServer;
use pgfleet_server::auth::{Authenticator, SessionStore, UserSpec};
use pgfleet_testkit::TestDatabase;
use tonic::transport::{Channel, Endpoint};

/// A started server and a session on it.
pub struct Served {
    pub server: RunningServer,
    pub channel: Channel,
    /// Bearer token of the user [`serve`] logged in.
    pub token: String,
}

/// Starts the server over `history` and `clouds` (one `app` database each),
/// creates `username` with `role` and logs it in.
pub async fn serve(
    history: &TestDatabase,
    clouds: &[(&str, &TestDatabase)],
    username: &str,
    role: Role,
) -> anyhow::Result<Served> {
    let text = config_toml(history, clouds);
    // Starting the server applies the history store's migrations: the user comes after.
    let server = RunningServer::start(load_config(&text)?)
        .await
        .context("starting the server")?;
    let password = create_user(history, load_config(&text)?, username, role).await?;
    let channel = Endpoint::from_shared(format!("http://{}", server.local_addr()))?
        .connect()
        .await
        .context("connecting to the server")?;
    let token = AuthServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            username: username.to_owned(),
            password,
        })
        .await
        .context("logging in")?
        .into_inner()
        .token;
    Ok(Served {
        server,
        channel,
        token,
    })
}

/// The server's configuration, written as `tests/support` writes it: `[auth]` with bcrypt
/// cost 4, sessions in Redis under a prefix unique to this run, one `app` database per
/// cloud, and no replication scheduler (benchmarks store no jobs).
fn config_toml(history: &TestDatabase, clouds: &[(&str, &TestDatabase)]) -> String {
    let mut text = format!(
        "[server]\nlisten_addr = '127.0.0.1:0'\nshutdown_grace = '2s'\n\
         [history]\nhost = '{}'\nport = {}\nuser = '{}'\ndatabase = '{}'\nsslmode = 'disable'\n\
         [auth]\nbcrypt_cost = 4\nmin_password_length = 10\n\
         [redis]\nurl = '{}'\nkey_prefix = '{}:'\nconnect_timeout = '500ms'\n\
         [replication]\nscheduler = false\n\
         [audit.chain]\nkey = '{}{}'\n",
        history.host(),
        history.port(),
        history.user(),
        history.name(),
        pgfleet_testkit::redis_url(),
        history.name(),
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    for (cloud, db) in clouds {
        text.push_str(&format!(
            "[[clouds]]\nname = '{cloud}'\n\
             [[clouds.databases]]\nname = 'app'\nhost = '{}'\nport = {}\nuser = '{}'\ndatabase = '{}'\n\
             sslmode = 'disable'\nschemas = ['public']\n",
            db.host(),
            db.port(),
            db.user(),
            db.name()
        ));
    }
    text
}

fn load_config(text: &str) -> anyhow::Result<LoadedConfig> {
    pgfleet_config::load_str(
        text,
        FileFormat::Toml,
        Path::new("bench.toml"),
        &Inputs {
            variables: &ProcessEnv,
            overrides: Vec::new(),
        },
    )
    .map_err(|e| anyhow::anyhow!("bench config: {e}\n{text}"))
}

/// Creates `username` with `role` straight in the history store (the server
/// must have migrated it); returns its password.
async fn create_user(
    history: &TestDatabase,
    loaded: LoadedConfig,
    username: &str,
    role: Role,
) -> anyhow::Result<String> {
    let pool = history.pool().await?;
    let authenticator = Authenticator::new(pool.clone(), SessionStore::memory(), loaded.config.auth).await?;
    let password = format!("Pw-{}", uuid::Uuid::new_v4().simple());
    authenticator
        .create_user(&UserSpec {
            username,
            email: &format!("{username}@example.com"),
            name: username,
            password: &password,
            role,
        })
        .await
        .with_context(|| format!("creating {username}"))?;
    pool.close().await;
    Ok(password)
}
