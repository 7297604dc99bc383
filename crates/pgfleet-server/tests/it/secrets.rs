//! The `pgfleet` binary as an operator runs it: `user create` for the first
//! admin, then `serve` at debug level through a session of auth calls. The
//! captured output must never contain a password, token, key or hash.

use std::time::Duration;

use pgfleet_proto::pgfleet::v1 as pb;
use tokio::process::Command;

use crate::support::{
    Fleet, api_key, auth_client, bearer, child_output, login, send_signal, spawn_server_binary,
};

#[tokio::test(flavor = "multi_thread")]
async fn logs_of_a_whole_session_hold_no_secrets() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let port = pgfleet_testkit::free_port()?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("pgfleet.toml");
    let toml = fleet.config_toml("").replace(
        "listen_addr = '127.0.0.1:0'",
        &format!("listen_addr = '127.0.0.1:{port}'"),
    );
    std::fs::write(&config_path, toml)?;
    let bin = env!("CARGO_BIN_EXE_pgfleet");
    let admin_password = "first-admin-passphrase";
    let mut secrets: Vec<String> = vec![admin_password.to_owned()];

    let created = Command::new(bin)
        .env("PGFLEET_LOG", "debug")
        .env("PGFLEET_PASSWORD", admin_password)
        .args(["--config", &config_path.to_string_lossy()])
        .args(["user", "create", "--username", "root", "--role", "master"])
        .output()
        .await?;
    let mut captured = String::from_utf8_lossy(&created.stdout).into_owned();
    captured.push_str(&String::from_utf8_lossy(&created.stderr));
    assert!(created.status.success(), "{captured}");
    assert!(captured.contains("created MASTER user \"root\""), "{captured}");
    // Running it again is an error, unless told it may exist.
    let again = Command::new(bin)
        .env("PGFLEET_PASSWORD", admin_password)
        .args(["--config", &config_path.to_string_lossy()])
        .args(["user", "create", "--username", "root", "--role", "MASTER"])
        .output()
        .await?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already taken"));

    let (mut server, channel) = spawn_server_binary(&config_path, port).await?;
    let mut client = auth_client(&channel);

    let admin = login(&channel, "root", admin_password).await?;
    secrets.push(admin.clone());
    let user_password = "a-users-passphrase";
    secrets.push(user_password.to_owned());
    client
        .create_user(bearer(
            pb::CreateUserRequest {
                username: "worker".to_owned(),
                email: "worker@example.com".to_owned(),
                name: "Worker".to_owned(),
                password: user_password.to_owned(),
                role: pb::Role::User.into(),
            },
            &admin,
        ))
        .await?;
    let worker = login(&channel, "worker", user_password).await?;
    secrets.push(worker.clone());
    assert!(login(&channel, "worker", "wrong-passphrase-x").await.is_err());
    secrets.push("wrong-passphrase-x".to_owned());
    let changed = "changed-passphrase";
    secrets.push(changed.to_owned());
    client
        .change_password(bearer(
            pb::ChangePasswordRequest {
                old_password: user_password.to_owned(),
                new_password: changed.to_owned(),
            },
            &worker,
        ))
        .await?;
    let reset = "reset-passphrase";
    secrets.push(reset.to_owned());
    client
        .reset_password(bearer(
            pb::ResetPasswordRequest {
                username: "worker".to_owned(),
                new_password: reset.to_owned(),
            },
            &admin,
        ))
        .await?;
    let key = client
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: "etl".to_owned(),
                role: pb::Role::Reader.into(),
                expires_at: None,
                allowed_targets: vec![pb::TargetPattern {
                    cloud: "*".to_owned(),
                    database: "*".to_owned(),
                }],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .secret;
    secrets.push(key.clone());
    client.me(api_key(pb::MeRequest {}, &key)).await?;
    // A key whose secret is wrong must not be echoed either.
    let forged = format!("{}AAAA", &key[..key.len() - 4]);
    assert!(client.me(api_key(pb::MeRequest {}, &forged)).await.is_err());
    secrets.push(forged);
    client.logout(bearer(pb::LogoutRequest {}, &admin)).await?;
    drop(client);
    drop(channel);

    // SIGTERM: graceful shutdown, then read everything it wrote.
    send_signal(&server, "TERM").await?;
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait()).await??;
    assert!(status.success(), "pgfleet serve exited with {status}");
    let output = child_output(&mut server).await?;
    captured.push_str(&output);

    assert!(captured.contains("login"), "the log was captured:\n{captured}");
    assert!(captured.contains("API key created"), "{captured}");
    let pool = fleet.history.pool().await?;
    let hashes: Vec<String> = sqlx::query_scalar("SELECT password_hash FROM pgfleet.users")
        .fetch_all(&pool)
        .await?;
    secrets.extend(hashes);
    pool.close().await;
    secrets.push("$2b$04$".to_owned()); // any bcrypt hash at the test cost
    for secret in &secrets {
        if let Some(at) = captured.find(secret.as_str()) {
            let start = captured.floor_char_boundary(at.saturating_sub(300));
            panic!(
                "log contains a secret ({} chars) here: {}",
                secret.len(),
                &captured[start..at]
            );
        }
    }
    // The key's secret half (after the public prefix) on its own, too.
    let secret_half = &key["pgf_".len() + 12 + 1..];
    assert!(!captured.contains(secret_half));
    Ok(())
}
