//! Logins, API keys and refused attempts, end to end against the real
//! server, PostgreSQL (history store) and Redis or the in-memory session
//! store: guessing slows the guesser without locking out the account's
//! owner, API keys end with their creator's MASTER standing, and refusals
//! are logged and counted with who and from where (never a secret).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pgfleet_config::{FileFormat, Inputs, LoadedConfig, ProcessEnv};
use pgfleet_engine::advisory_locks::{HistoryLock, NAMESPACE};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_server::app::RunningServer;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::support::{self, Fleet, api_key, auth_client, bearer, channel, login, target};

/// Where sessions and login counters live.
#[derive(Debug, Clone, Copy)]
enum Store {
    Redis,
    Memory,
}

/// A fleet whose server believes `X-Forwarded-For` from 127.0.0.1 (the
/// tests play the proxy), with `auth` appended to `[auth]`.
async fn fleet(store: Store, auth: &str) -> anyhow::Result<Fleet> {
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "trusted_proxies = ['127.0.0.1/32']\n".to_owned();
    fleet.auth_toml.push_str(auth);
    if matches!(store, Store::Memory) {
        fleet.redis_url = None;
    }
    Ok(fleet)
}

/// The fleet's config with `/metrics` on a free port.
fn config_with_metrics(fleet: &Fleet) -> LoadedConfig {
    let text = fleet.config_toml("");
    pgfleet_config::load_str(
        &text,
        FileFormat::Toml,
        Path::new("security_auth.toml"),
        &Inputs {
            variables: &ProcessEnv,
            overrides: vec![(
                "PGFLEET__SERVER__METRICS_ADDR".to_owned(),
                "127.0.0.1:0".to_owned(),
            )],
        },
    )
    .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// `Login` as a client behind the trusted proxy at `address`.
async fn login_from(
    channel: &Channel,
    address: &str,
    username: &str,
    password: &str,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(pb::LoginRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    });
    let forwarded = MetadataValue::try_from(address).expect("address is a header value");
    request.metadata_mut().insert("x-forwarded-for", forwarded);
    Ok(auth_client(channel).login(request).await?.into_inner().token)
}

/// The RetryInfo delay of a throttled answer.
fn retry_delay(status: &tonic::Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .get_error_details()
        .retry_info()
        .and_then(|retry| retry.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"))
}

/// GET /metrics.
async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use http_body_util::{BodyExt as _, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let response = client.get(format!("http://{addr}/metrics").parse()?).await?;
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

/// The value of the sample whose line starts with `series` (name and
/// labels exactly as rendered), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `pgfleet_refused_calls_total` of one (service, method, code, reason).
fn refused(text: &str, service: &str, method: &str, code: &str, reason: &str) -> f64 {
    sample(
        text,
        &format!(
            "pgfleet_refused_calls_total{{code=\"{code}\",method=\"{method}\",reason=\"{reason}\",service=\"{service}\"}}"
        ),
    )
}

// ------------------------------------------------------------ throttling

/// A guessing run against `admin` from one address: parallel guesses get
/// exactly the free failures (counting is atomic), then that address waits,
/// even with the right password, while the admin logs in from elsewhere.
async fn admin_logs_in_from_elsewhere_during_guessing(store: Store) -> anyhow::Result<()> {
    let fleet = fleet(
        store,
        "login_failures_before_backoff = 3\nlogin_backoff_initial = '30s'\n\
         login_attempts_per_address = 1000\nlogin_username_slowdown_after = 1000\n",
    )
    .await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("admin", Role::Master).await?;

    let guesses = (0..20).map(|n| {
        let channel = channel.clone();
        async move { login_from(&channel, "198.51.100.7", "admin", &format!("guess-number-{n}")).await }
    });
    let codes: Vec<Code> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(|answer| answer.expect_err("wrong password").code())
        .collect();
    let wrong = codes
        .iter()
        .filter(|code| **code == Code::Unauthenticated)
        .count();
    let throttled = codes
        .iter()
        .filter(|code| **code == Code::ResourceExhausted)
        .count();
    assert_eq!((wrong, throttled), (3, 17), "{store:?}: {codes:?}");

    // The guessing address waits, whatever it sends.
    let refused = login_from(&channel, "198.51.100.7", "admin", &password)
        .await
        .expect_err("the guesser's address waits");
    let delay = retry_delay(&refused);
    assert!(
        delay > Duration::from_secs(25) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );
    assert!(
        refused.message().contains("username from this address"),
        "{}",
        refused.message()
    );

    // The owner, from another address, is not refused.
    let token = login_from(&channel, "203.0.113.9", "admin", &password).await?;
    let me = auth_client(&channel)
        .me(bearer(pb::MeRequest {}, &token))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::Master as i32);
    // ... and the owner's success did not lift the guesser's wait.
    let still = login_from(&channel, "198.51.100.7", "admin", "guess-number-21")
        .await
        .expect_err("still waiting");
    assert_eq!(still.code(), Code::ResourceExhausted, "{store:?}");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_logs_in_from_elsewhere_during_guessing_with_redis() -> anyhow::Result<()> {
    admin_logs_in_from_elsewhere_during_guessing(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_logs_in_from_elsewhere_during_guessing_in_memory() -> anyhow::Result<()> {
    admin_logs_in_from_elsewhere_during_guessing(Store::Memory).await
}

/// Each failure past the free ones doubles the wait RetryInfo announces.
async fn backoff_doubles_in_retry_info(store: Store) -> anyhow::Result<()> {
    let fleet = fleet(
        store,
        "login_failures_before_backoff = 2\nlogin_backoff_initial = '300ms'\nlogin_backoff_max = '1m'\n",
    )
    .await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("bob", Role::User).await?;
    let guess = async || login_from(&channel, "198.51.100.8", "bob", "wrong-password-xyz").await;

    let first = guess().await.expect_err("wrong");
    assert_eq!(first.code(), Code::Unauthenticated, "free failure");
    let mut delays = Vec::new();
    for expected_ms in [300u64, 600, 1200] {
        // This failure imposes the wait the next attempt is told about.
        let failed = guess().await.expect_err("wrong");
        assert_eq!(failed.code(), Code::Unauthenticated, "{store:?}: {failed:?}");
        let refused = guess().await.expect_err("must wait");
        let delay = retry_delay(&refused);
        let expected = Duration::from_millis(expected_ms);
        assert!(
            delay > expected / 2 && delay <= expected,
            "{store:?}: wait {delay:?}, expected about {expected:?}"
        );
        delays.push(delay);
        tokio::time::sleep(delay + Duration::from_millis(30)).await;
    }
    assert!(delays.windows(2).all(|pair| pair[1] > pair[0]), "{delays:?}");

    // Once the wait is over, the right password works and starts over.
    login_from(&channel, "198.51.100.8", "bob", &password).await?;
    let fresh = guess().await.expect_err("wrong");
    assert_eq!(fresh.code(), Code::Unauthenticated, "the pair started over");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_doubles_in_retry_info_with_redis() -> anyhow::Result<()> {
    backoff_doubles_in_retry_info(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_doubles_in_retry_info_in_memory() -> anyhow::Result<()> {
    backoff_doubles_in_retry_info(Store::Memory).await
}

/// Spraying usernames from one address (or one IPv6 /64) uses up that
/// address's failures; other addresses are unaffected.
async fn per_address_limit(store: Store) -> anyhow::Result<()> {
    let fleet = fleet(
        store,
        "login_failures_before_backoff = 100\nlogin_attempts_per_address = 5\nlogin_window = '2m'\n",
    )
    .await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("carol", Role::Reader).await?;

    for (sprayer, neighbour, elsewhere) in [
        ("198.51.100.9", "198.51.100.9", "198.51.100.10"),
        ("2001:db8:7:7::1", "2001:db8:7:7::99", "2001:db8:7:8::1"),
    ] {
        for n in 0..5 {
            let wrong = login_from(&channel, sprayer, &format!("victim{n}"), "wrong-password-xyz")
                .await
                .expect_err("wrong");
            assert_eq!(wrong.code(), Code::Unauthenticated, "{store:?} {sprayer} #{n}");
        }
        // Over the limit: refused before any password is checked, the
        // right one included, for the whole window.
        let refused = login_from(&channel, neighbour, "carol", &password)
            .await
            .expect_err("address over its limit");
        let delay = retry_delay(&refused);
        assert!(
            delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
            "{store:?} {neighbour}: {delay:?}"
        );
        assert!(refused.message().contains("address"), "{}", refused.message());
        login_from(&channel, elsewhere, "carol", &password).await?;
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_limit_with_redis() -> anyhow::Result<()> {
    per_address_limit(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_limit_in_memory() -> anyhow::Result<()> {
    per_address_limit(Store::Memory).await
}

/// Guessing one username from many addresses (one failure each: no
/// address is ever refused) is reported once, slows every login of that
/// username down, and never refuses its owner.
async fn distributed_guessing_is_reported_and_slowed_not_refused(store: Store) -> anyhow::Result<()> {
    let fleet = fleet(
        store,
        "login_username_slowdown_after = 8\nlogin_username_delay = '400ms'\n",
    )
    .await?;
    let server = RunningServer::start(config_with_metrics(&fleet)).await?;
    let metrics_addr = server.metrics_addr().expect("metrics are on");
    let channel = channel(&server).await?;
    let password = fleet.create_user("dana", Role::Master).await?;

    let guesses = (1..=12).map(|host| {
        let channel = channel.clone();
        async move { login_from(&channel, &format!("192.0.2.{host}"), "dana", "wrong-password-xyz").await }
    });
    for answer in futures::future::join_all(guesses).await {
        assert_eq!(
            answer.expect_err("wrong").code(),
            Code::Unauthenticated,
            "{store:?}"
        );
    }
    let started = Instant::now();
    login_from(&channel, "203.0.113.50", "dana", &password).await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "{store:?}: slowed down, took {took:?}"
    );

    let text = scrape(metrics_addr).await?;
    assert_eq!(
        sample(&text, "pgfleet_login_guessing_detected_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        refused(
            &text,
            "pgfleet.v1.AuthService",
            "Login",
            "UNAUTHENTICATED",
            "invalid_password"
        ),
        12.0,
        "{text}"
    );
    assert_eq!(
        refused(
            &text,
            "pgfleet.v1.AuthService",
            "Login",
            "RESOURCE_EXHAUSTED",
            "throttled"
        ),
        0.0
    );
    for secret in [
        "dana",
        "192.0.2.",
        "203.0.113.50",
        "wrong-password-xyz",
        password.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the metrics");
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_guessing_is_reported_and_slowed_not_refused_with_redis() -> anyhow::Result<()> {
    distributed_guessing_is_reported_and_slowed_not_refused(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_guessing_is_reported_and_slowed_not_refused_in_memory() -> anyhow::Result<()> {
    distributed_guessing_is_reported_and_slowed_not_refused(Store::Memory).await
}

// --------------------------------------------------------------- API keys

/// Creates a USER key for every target as the MASTER behind `token`.
async fn create_key(channel: &Channel, token: &str, name: &str) -> anyhow::Result<(String, String)> {
    let created = auth_client(channel)
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: name.to_owned(),
                role: pb::Role::User.into(),
                expires_at: None,
                allowed_targets: vec![pb::TargetPattern {
                    cloud: "*".to_owned(),
                    database: "*".to_owned(),
                }],
            },
            token,
        ))
        .await?
        .into_inner();
    let id = created.api_key.map(|key| key.id).unwrap_or_default();
    Ok((id, created.secret))
}

/// `Me` with an API key: OK or the status.
async fn key_call(channel: &Channel, key: &str) -> Result<(), tonic::Status> {
    auth_client(channel)
        .me(api_key(pb::MeRequest {}, key))
        .await
        .map(drop)
}

/// (id, revoked) of every key, inactive ones included.
async fn listed_keys(
    channel: &Channel,
    token: &str,
    include_inactive: bool,
) -> anyhow::Result<Vec<(String, bool)>> {
    let keys = auth_client(channel)
        .list_api_keys(bearer(
            pb::ListApiKeysRequest {
                page_size: 100,
                page_token: String::new(),
                include_inactive,
            },
            token,
        ))
        .await?
        .into_inner()
        .api_keys;
    Ok(keys
        .into_iter()
        .map(|key| (key.id, key.revoked_at.is_some()))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_end_with_their_creators_master_standing() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let root_password = fleet.create_user("root", Role::Master).await?;
    let root = login(&channel, "root", &root_password).await?;
    let mut keys = Vec::new();
    for creator in ["alice", "bob", "erin"] {
        let password = fleet.create_user(creator, Role::Master).await?;
        let token = login(&channel, creator, &password).await?;
        let (id, secret) = create_key(&channel, &token, &format!("{creator}-service")).await?;
        key_call(&channel, &secret).await?;
        keys.push((id, secret));
    }
    let [(alice_id, alice_key), (bob_id, bob_key), (erin_id, erin_key)] = &keys[..] else {
        unreachable!("three keys")
    };

    // alice deactivated, bob demoted: their keys fail on the very next call.
    auth_client(&channel)
        .deactivate_users(bearer(
            pb::DeactivateUsersRequest {
                usernames: vec!["alice".to_owned()],
            },
            &root,
        ))
        .await?;
    auth_client(&channel)
        .change_role(bearer(
            pb::ChangeRoleRequest {
                username: "bob".to_owned(),
                role: pb::Role::User.into(),
            },
            &root,
        ))
        .await?;
    for (who, key) in [("alice", alice_key), ("bob", bob_key)] {
        let refused = key_call(&channel, key).await.expect_err("creator lost MASTER");
        assert_eq!(refused.code(), Code::Unauthenticated, "{who}");
        // The same answer as any dead key: nothing about the creator.
        assert_eq!(refused.message(), "API key unknown, revoked or expired", "{who}");
    }
    key_call(&channel, erin_key).await?;

    // Revoked, so a comeback does not revive them.
    let listed = listed_keys(&channel, &root, true).await?;
    for (id, revoked) in &listed {
        assert_eq!(*revoked, id != erin_id, "{id} in {listed:?}");
    }
    auth_client(&channel)
        .activate_users(bearer(
            pb::ActivateUsersRequest {
                usernames: vec!["alice".to_owned()],
            },
            &root,
        ))
        .await?;
    auth_client(&channel)
        .change_role(bearer(
            pb::ChangeRoleRequest {
                username: "bob".to_owned(),
                role: pb::Role::Master.into(),
            },
            &root,
        ))
        .await?;
    for key in [alice_key, bob_key] {
        assert_eq!(
            key_call(&channel, key).await.expect_err("stays revoked").code(),
            Code::Unauthenticated
        );
    }
    assert_eq!(
        listed_keys(&channel, &root, false).await?,
        [(erin_id.clone(), false)],
        "only erin's key is live ({alice_id}, {bob_id} are not)"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_checked_against_their_creator_on_every_use() -> anyhow::Result<()> {
    // Changes made in SQL, behind pgfleet's back, revoke nothing: the check
    // on use still refuses the key on the next call.
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let history = fleet.history.pool().await?;
    let root = login(&channel, "root", &fleet.create_user("root", Role::Master).await?).await?;
    let mut secrets = Vec::new();
    for creator in ["fay", "gus", "hal"] {
        let token = login(
            &channel,
            creator,
            &fleet.create_user(creator, Role::Master).await?,
        )
        .await?;
        secrets.push(create_key(&channel, &token, &format!("{creator}-job")).await?.1);
    }
    for (sql, secret) in [
        (
            "UPDATE pgfleet.users SET active = false WHERE username = 'fay'",
            &secrets[0],
        ),
        (
            "UPDATE pgfleet.users SET role = 'READER' WHERE username = 'gus'",
            &secrets[1],
        ),
        ("DELETE FROM pgfleet.users WHERE username = 'hal'", &secrets[2]),
    ] {
        key_call(&channel, secret).await?;
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&history).await?;
        let refused = key_call(&channel, secret).await.expect_err(sql);
        assert_eq!(refused.code(), Code::Unauthenticated, "{sql}");
        assert_eq!(refused.message(), "API key unknown, revoked or expired", "{sql}");
    }
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pgfleet.api_keys WHERE revoked_at IS NOT NULL")
            .fetch_one(&history)
            .await?;
    assert_eq!(revoked, 0, "refused on use, not revoked");
    assert!(
        listed_keys(&channel, &root, false).await?.is_empty(),
        "keys that would be refused are not listed as live"
    );
    assert_eq!(listed_keys(&channel, &root, true).await?.len(), 3);

    // A MASTER who lost the role after passing the gate gets no key: the
    // insert itself requires an active MASTER creator.
    fleet.create_user("ivy", Role::Master).await?;
    let ivy: uuid::Uuid =
        sqlx::query_scalar("UPDATE pgfleet.users SET role = 'USER' WHERE username = 'ivy' RETURNING id")
            .fetch_one(&history)
            .await?;
    let store = pgfleet_server::auth::api_keys::ApiKeyStore::new(history.clone());
    let created = store
        .create(&pgfleet_server::auth::api_keys::NewApiKey {
            name: "ivy-job",
            role: Role::User,
            allowed_targets: &[],
            expires_at: None,
            created_by: "user:ivy",
            created_by_user_id: ivy,
        })
        .await;
    assert!(
        matches!(created, Err(pgfleet_server::auth::AuthError::PermissionDenied(_))),
        "creator is no MASTER: {:?}",
        created.map(|(key, _)| key)
    );
    history.close().await;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_keys_get_their_creator_from_the_migration() -> anyhow::Result<()> {
    // The history store as the previous release left it (migrations up to
    // 0005), with keys of a MASTER, of a deactivated MASTER, of a demoted
    // one and of nobody on record; then the server migrates it.
    let fleet = Fleet::create().await?;
    let mut connection = fleet.history.connect().await?;
    pgfleet_engine::history_store::MIGRATOR
        .run_to(5, &mut connection)
        .await?;
    let hasher = pgfleet_server::auth::passwords::PasswordHasher::new(4, 10).await?;
    let password = "an-old-password-1";
    let hash = hasher.hash(password).await?;
    for (username, role, active) in [
        ("old-root", "MASTER", true),
        ("old-gone", "MASTER", false),
        ("old-demoted", "USER", true),
    ] {
        sqlx::query(
            "INSERT INTO pgfleet.users (id, username, email, password_hash, role, active) \
             VALUES (gen_random_uuid(), $1, $1 || '@example.com', $2, $3, $4)",
        )
        .bind(username)
        .bind(&hash)
        .bind(role)
        .bind(active)
        .execute(&mut connection)
        .await?;
    }
    let mut secrets = Vec::new();
    for creator in [
        "user:old-root",
        "user:old-gone",
        "user:old-demoted",
        "user:never-existed",
    ] {
        let secret = pgfleet_server::auth::credentials::ApiKeySecret::generate();
        sqlx::query(
            "INSERT INTO pgfleet.api_keys (id, name, key_prefix, secret_sha256, role, allowed_targets, created_by) \
             VALUES (gen_random_uuid(), $1, $2, $3, 'USER', '[{\"cloud\": \"*\", \"database\": \"*\"}]', $4)",
        )
        .bind(format!("key-of-{}", creator.trim_start_matches("user:")))
        .bind(&secret.prefix)
        .bind(secret.secret_digest().as_slice())
        .bind(creator)
        .execute(&mut connection)
        .await?;
        secrets.push((creator, secret.expose()));
    }
    drop(connection);

    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    for (creator, secret) in &secrets {
        let answer = key_call(&channel, secret).await;
        if *creator == "user:old-root" {
            answer.map_err(|status| anyhow::anyhow!("{creator}: {status:?}"))?;
        } else {
            assert_eq!(
                answer.expect_err(creator).code(),
                Code::Unauthenticated,
                "{creator}"
            );
        }
    }
    let history = fleet.history.pool().await?;
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT created_by, created_by_user_id IS NOT NULL, revoked_at IS NOT NULL \
         FROM pgfleet.api_keys ORDER BY created_by",
    )
    .fetch_all(&history)
    .await?;
    assert_eq!(
        rows,
        [
            ("user:never-existed".to_owned(), false, true),
            ("user:old-demoted".to_owned(), true, true),
            ("user:old-gone".to_owned(), true, true),
            ("user:old-root".to_owned(), true, false),
        ]
    );
    history.close().await;
    server.shutdown().await?;
    Ok(())
}

// ------------------------------------------------------- refusals on record

/// The `pgfleet` binary with JSON log files; refused calls of each kind;
/// then the log lines and `/metrics` say who and from where (and no secret).
#[tokio::test(flavor = "multi_thread")]
async fn refused_attempts_are_logged_and_counted_with_identity_and_address() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "trusted_proxies = ['127.0.0.1/32']\nmetrics_addr = '127.0.0.1:0'\n".to_owned();
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("logs");
    let config = dir.path().join("pgfleet.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[log]\nformat = 'json'\nlevel = 'info,sqlx=warn'\nfile = '{}'\nrotation = 'daily'\n",
            fleet.config_toml(""),
            logs.display()
        ),
    )?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(["--config", &config.to_string_lossy(), "serve"])
        .env_remove("PGFLEET_LOG")
        .env_remove("RUST_LOG")
        .env_remove("PGFLEET_LOG_FORMAT")
        .kill_on_drop(true)
        .spawn()?;
    let mut addrs = None;
    for _ in 0..300 {
        let lines = read_log_lines(&logs)?;
        let grpc = logged_field(&lines, "pgfleet listening", "addr");
        let metrics = lines
            .iter()
            .find(|line| {
                line["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("metrics on"))
            })
            .and_then(|line| line["fields"]["addr"].as_str().map(str::to_owned));
        if let (Some(grpc), Some(metrics)) = (grpc, metrics) {
            addrs = Some((grpc, metrics));
            break;
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "the server exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (grpc_addr, metrics_addr) = addrs.ok_or_else(|| anyhow::anyhow!("the server did not start"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))?
        .connect()
        .await?;

    let admin_password = fleet.create_user("audit-admin", Role::Master).await?;
    let admin = login(&channel, "audit-admin", &admin_password).await?;
    let reader_password = fleet.create_user("audit-reader", Role::Reader).await?;
    let forwarded = |request: &mut tonic::metadata::MetadataMap, address: &str| {
        request.insert(
            "x-forwarded-for",
            MetadataValue::try_from(address).expect("address"),
        );
    };

    // 1. A wrong password for a real account, and one for a username that
    //    may be someone's password (never logged).
    login_from(
        &channel,
        "198.51.100.21",
        "audit-admin",
        "wrong-secret-password-1",
    )
    .await
    .expect_err("wrong");
    login_from(
        &channel,
        "198.51.100.21",
        "Typed-My-Password-Here",
        "wrong-secret-password-2",
    )
    .await
    .expect_err("unknown");
    // 2. No credentials.
    let mut request = tonic::Request::new(pb::GetHealthRequest::default());
    forwarded(request.metadata_mut(), "198.51.100.22");
    pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient::new(channel.clone())
        .get_health(request)
        .await
        .expect_err("no credentials");
    // 3. A READER calling a MASTER method (the gate), then a write
    //    (refused by the query service: PERMISSION_DENIED).
    let reader = login_from(&channel, "198.51.100.23", "audit-reader", &reader_password).await?;
    let mut request = bearer(pb::ListUsersRequest::default(), &reader);
    forwarded(request.metadata_mut(), "198.51.100.23");
    let role = auth_client(&channel).list_users(request).await.expect_err("role");
    assert_eq!(role.code(), Code::PermissionDenied);
    let mut request = bearer(
        pb::ExecuteRequest {
            query: "CREATE TABLE reader_was_here (id int)".to_owned(),
            scope: Some(pb::execute_request::Scope::Targets(pb::TargetList {
                targets: vec![target("aws", "app")],
            })),
            ..Default::default()
        },
        &reader,
    );
    forwarded(request.metadata_mut(), "198.51.100.23");
    let denied = QueryServiceClient::new(channel.clone())
        .execute(request)
        .await
        .expect_err("a READER's write");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // 4. An API key whose creator was deactivated.
    let keeper_password = fleet.create_user("audit-keeper", Role::Master).await?;
    let keeper = login(&channel, "audit-keeper", &keeper_password).await?;
    let (_, key) = create_key(&channel, &keeper, "audit-keeper-job").await?;
    let history = fleet.history.pool().await?;
    sqlx::query("UPDATE pgfleet.users SET active = false WHERE username = 'audit-keeper'")
        .execute(&history)
        .await?;
    history.close().await;
    let mut request = api_key(pb::MeRequest {}, &key);
    forwarded(request.metadata_mut(), "198.51.100.24");
    auth_client(&channel)
        .me(request)
        .await
        .expect_err("creator inactive");

    let metrics = scrape(metrics_addr.parse()?).await?;
    for (service, method, code, reason) in [
        (
            "pgfleet.v1.AuthService",
            "Login",
            "UNAUTHENTICATED",
            "invalid_password",
        ),
        (
            "pgfleet.v1.FleetService",
            "GetHealth",
            "UNAUTHENTICATED",
            "no_credentials",
        ),
        ("pgfleet.v1.AuthService", "ListUsers", "PERMISSION_DENIED", "role"),
        (
            "pgfleet.v1.QueryService",
            "Execute",
            "PERMISSION_DENIED",
            "denied",
        ),
        (
            "pgfleet.v1.AuthService",
            "Me",
            "UNAUTHENTICATED",
            "api_key_creator",
        ),
    ] {
        let expected = if reason == "invalid_password" { 2.0 } else { 1.0 };
        assert_eq!(
            refused(&metrics, service, method, code, reason),
            expected,
            "{method} {reason}:\n{metrics}"
        );
    }

    drop(channel);
    stop_server(&mut child).await?;
    let lines = read_log_lines(&logs)?;
    let refusals: Vec<(String, String, String)> = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "call refused")
        .map(|line| {
            let field = |name: &str| line["fields"][name].as_str().unwrap_or_default().to_owned();
            (field("reason"), field("identity"), field("client"))
        })
        .collect();
    for expected in [
        ("invalid_password", "user:audit-admin", "198.51.100.21"),
        ("invalid_password", "unknown user", "198.51.100.21"),
        ("no_credentials", "unknown", "198.51.100.22"),
        ("role", "user:audit-reader", "198.51.100.23"),
        ("denied", "user:audit-reader", "198.51.100.23"),
        ("api_key_creator", "api_key:audit-keeper-job", "198.51.100.24"),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(refusals.contains(&expected), "{expected:?} not in {refusals:?}");
    }
    let text = std::fs::read_to_string(only_log_file(&logs)?)?;
    for secret in [
        "wrong-secret-password-1",
        "wrong-secret-password-2",
        "typed-my-password-here",
        "Typed-My-Password-Here",
        admin_password.as_str(),
        reader_password.as_str(),
        admin.as_str(),
        reader.as_str(),
        key.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the log");
    }
    for secret in ["audit-admin", "198.51.100.", key.as_str()] {
        assert!(!metrics.contains(secret), "{secret:?} is in the metrics");
    }
    Ok(())
}

/// SIGTERM, then wait for the exit (the log writer flushes on the way out).
async fn stop_server(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    support::send_signal(child, "TERM").await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    anyhow::ensure!(status.success(), "the server exited with {status}");
    Ok(())
}

/// The one log file in `directory`.
fn only_log_file(directory: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut files = Vec::new();
    if directory.is_dir() {
        for entry in std::fs::read_dir(directory)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("pgfleet."))
            {
                files.push(path);
            }
        }
    }
    anyhow::ensure!(files.len() == 1, "log files: {files:?}");
    Ok(files.remove(0))
}

/// Every JSON line logged so far (none before the file exists).
fn read_log_lines(directory: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    if !directory.is_dir() {
        return Ok(Vec::new());
    }
    let Ok(path) = only_log_file(directory) else {
        return Ok(Vec::new());
    };
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// `field` of the first line whose message is `message`.
fn logged_field(lines: &[serde_json::Value], message: &str, field: &str) -> Option<String> {
    lines
        .iter()
        .find(|line| line["fields"]["message"] == message)
        .and_then(|line| line["fields"][field].as_str().map(str::to_owned))
}

// ---------------------------------------------------------- advisory locks

#[tokio::test(flavor = "multi_thread")]
async fn fixed_locks_live_apart_from_bigint_keys_in_postgresql() -> anyhow::Result<()> {
    // A bigint lock whose value spells out a fixed lock's pair (what a job
    // lock hash could produce) does not block it: the spaces are separate.
    let database = pgfleet_testkit::TestDatabase::create("locks").await?;
    let mut holder = database.connect().await?;
    let mut taker = database.connect().await?;
    for lock in HistoryLock::ALL {
        let (namespace, purpose) = lock.key();
        let as_bigint = (i64::from(namespace) << 32) | i64::from(purpose);
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(as_bigint)
            .fetch_one(&mut holder)
            .await?;
        assert!(held);
        let mut transaction = sqlx::Connection::begin(&mut taker).await?;
        assert!(
            lock.try_lock_xact(&mut transaction).await?,
            "{lock:?} blocked by a bigint key"
        );
        let objsubid: i16 = sqlx::query_scalar(
            "SELECT objsubid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
             AND classid = $1::oid AND objid = $2::oid",
        )
        .bind(i64::from(namespace))
        .bind(i64::from(purpose))
        .fetch_one(&mut *transaction)
        .await?;
        assert_eq!(objsubid, 2, "{lock:?} is in the two-key space");
        transaction.rollback().await?;
    }
    // Two fixed locks at once: distinct keys, both granted to two sessions.
    let mut first = sqlx::Connection::begin(&mut holder).await?;
    let mut second = sqlx::Connection::begin(&mut taker).await?;
    assert!(HistoryLock::LastMaster.try_lock_xact(&mut first).await?);
    assert!(HistoryLock::AuditRetention.try_lock_xact(&mut second).await?);
    assert!(
        !HistoryLock::LastMaster.try_lock_xact(&mut second).await?,
        "one lock, one holder"
    );
    assert_eq!(NAMESPACE, HistoryLock::LastMaster.key().0);
    Ok(())
}
