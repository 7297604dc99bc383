//! AuthService and the authentication gate, end to end against the real
//! PostgreSQL (history store) and Redis (sessions).

use std::collections::BTreeSet;
use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::RedisServer;
use prost::Message;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::support::{self, Fleet, api_key, auth_client, bearer, channel, login};

/// Every `pgfleet.v1` method, from the descriptor set the server serves.
fn every_method() -> Vec<String> {
    let set =
        prost_types::FileDescriptorSet::decode(pgfleet_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut methods = Vec::new();
    for file in set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    // Logout ends the caller's session: call it last.
    methods.sort_by_key(|m| (m.ends_with("/Logout"), m.clone()));
    methods
}

/// Calls `path` with an empty message and `credential` headers; returns the
/// status code (OK when it answered).
async fn call_raw(channel: &Channel, path: &str, credential: &Credential) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(());
    match credential {
        Credential::None => {}
        Credential::Token(token) => {
            request = bearer((), token);
        }
        Credential::Key(key) => {
            request = api_key((), key);
        }
    }
    let path = PathAndQuery::try_from(path.to_owned()).expect("path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    // Server-streaming methods answer an error as trailers-only, which the
    // unary client surfaces the same way; a stream that starts is "allowed".
    match grpc.server_streaming(request, path, codec).await {
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        },
        Err(status) => status.code(),
    }
}

enum Credential {
    None,
    Token(String),
    Key(String),
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_allows_and_denies_by_role() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let mut tokens = Vec::new();
    for (name, role) in [
        ("m-reader", Role::Reader),
        ("m-user", Role::User),
        ("m-master", Role::Master),
    ] {
        let password = fleet.create_user(name, role).await?;
        tokens.push((role, login(&channel, name, &password).await?));
    }
    let master_token = tokens[2].1.clone();
    let mut keys = Vec::new();
    for (role, name) in [(pb::Role::User, "svc-user"), (pb::Role::Reader, "svc-reader")] {
        let created = auth_client(&channel)
            .create_api_key(bearer(
                pb::CreateApiKeyRequest {
                    name: name.to_owned(),
                    role: role.into(),
                    expires_at: None,
                    allowed_targets: vec![pb::TargetPattern {
                        cloud: "*".to_owned(),
                        database: "*".to_owned(),
                    }],
                },
                &master_token,
            ))
            .await?
            .into_inner();
        keys.push((
            if role == pb::Role::User {
                Role::User
            } else {
                Role::Reader
            },
            created.secret,
        ));
    }

    // Written out independently of the server's table, from the issues.
    let master_only: BTreeSet<&str> = [
        "AuthService/CreateUser",
        "AuthService/ListUsers",
        "AuthService/ActivateUsers",
        "AuthService/DeactivateUsers",
        "AuthService/ChangeRole",
        "AuthService/ResetPassword",
        "AuthService/CreateApiKey",
        "AuthService/ListApiKeys",
        "AuthService/RevokeApiKey",
        "HistoryService/VerifyChain",
        "HistoryService/ExportChainCheckpoint",
        "ReplicationService/CreateJob",
        "ReplicationService/UpdateJob",
        "ReplicationService/DeleteJob",
        "ReplicationService/RunJob",
        "ReplicationService/ReplicateTable",
        "MigrationService/ApplyMigrations",
        "MigrationService/RollbackMigration",
        "MigrationService/RepairChecksum",
        "MigrationService/UploadMigrationSet",
        "FleetService/PromoteReplica",
        "BackupService/CreatePolicy",
        "BackupService/UpdatePolicy",
        "BackupService/DeletePolicy",
        "BackupService/RunBackup",
        "BackupService/RestoreBackup",
        "BackupService/DeleteBackup",
        "InsightsService/CancelBackend",
        "InsightsService/TerminateBackend",
    ]
    .into_iter()
    .collect();

    let methods = every_method();
    assert!(
        methods.len() >= 30,
        "descriptor set lists {} methods",
        methods.len()
    );
    let mut callers: Vec<(String, Option<Role>, Credential)> =
        vec![("anonymous".to_owned(), None, Credential::None)];
    for (role, token) in &tokens {
        callers.push((
            format!("user {role}"),
            Some(*role),
            Credential::Token(token.clone()),
        ));
    }
    for (role, key) in &keys {
        callers.push((
            format!("api key {role}"),
            Some(*role),
            Credential::Key(key.clone()),
        ));
    }
    let mut failures = Vec::new();
    for method in &methods {
        let short = method.trim_start_matches("/pgfleet.v1.");
        for (caller, role, credential) in &callers {
            let code = call_raw(&channel, method, credential).await;
            let expected_denial = match role {
                _ if short == "AuthService/Login" => None,
                None => Some(Code::Unauthenticated),
                Some(role) if master_only.contains(short) && *role != Role::Master => {
                    Some(Code::PermissionDenied)
                }
                Some(_) => None,
            };
            let ok = match expected_denial {
                Some(denial) => code == denial,
                None => !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            };
            if !ok {
                failures.push(format!(
                    "{short} as {caller}: got {code:?}, expected {expected_denial:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role matrix violations:\n{}",
        failures.join("\n")
    );

    // Methods outside pgfleet's table are closed even to MASTER.
    let unknown = call_raw(
        &channel,
        "/pgfleet.v1.QueryService/NoSuchMethod",
        &Credential::Token(master_token.clone()),
    )
    .await;
    assert_eq!(unknown, Code::PermissionDenied);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_sessions_cookies_and_logout() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("alice", Role::User).await?;
    let mut client = auth_client(&channel);

    let response = client
        .login(pb::LoginRequest {
            username: "Alice".to_owned(),
            password: password.clone(),
        })
        .await?;
    let cookie = response
        .metadata()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Login sets a cookie");
    let login = response.into_inner();
    assert!(login.token.len() >= 43, "256-bit token");
    assert!(
        cookie.starts_with(&format!("pgfleet_session={};", login.token)),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing from {cookie}");
    }
    let user = login.user.expect("user");
    assert_eq!(user.username, "alice");
    assert!(user.last_login_at.is_some());
    let expires = login.expires_at.expect("expiry").seconds - chrono::Utc::now().timestamp();
    assert!(
        (7 * 86_400 - 60..=7 * 86_400).contains(&expires),
        "default TTL is 7 days, got {expires}s"
    );

    // Only the token's hash is in Redis.
    let redis = redis::Client::open(pgfleet_testkit::redis_url())?;
    let mut redis_conn = redis.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", fleet.history.name()))
        .query_async(&mut redis_conn)
        .await?;
    assert!(keys.iter().any(|k| k.contains(":session:")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains(&login.token)), "{keys:?}");

    let me = client
        .me(bearer(pb::MeRequest {}, &login.token))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::User as i32);
    assert!(me.session_expires_at.is_some());
    assert!(matches!(me.principal, Some(pb::me_response::Principal::User(ref u)) if u.username == "alice"));

    // Browsers send the cookie instead of a bearer header.
    let mut by_cookie = tonic::Request::new(pb::MeRequest {});
    by_cookie.metadata_mut().insert(
        "cookie",
        format!("theme=dark; pgfleet_session={}", login.token).parse()?,
    );
    assert!(client.me(by_cookie).await.is_ok());

    // Wrong password and unknown user are indistinguishable.
    let wrong = client
        .login(pb::LoginRequest {
            username: "alice".to_owned(),
            password: "not-her-password".to_owned(),
        })
        .await
        .expect_err("wrong password");
    let unknown = client
        .login(pb::LoginRequest {
            username: "mallory".to_owned(),
            password: "not-her-password".to_owned(),
        })
        .await
        .expect_err("unknown user");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );

    let empty = client
        .login(pb::LoginRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(
        empty
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations[0].field.clone()),
        Some("username".to_owned())
    );

    let forged = client
        .me(bearer(pb::MeRequest {}, "forged-token"))
        .await
        .expect_err("forged");
    assert_eq!(forged.code(), Code::Unauthenticated);

    let logout = client.logout(bearer(pb::LogoutRequest {}, &login.token)).await?;
    let cleared = logout
        .metadata()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let after = client
        .me(bearer(pb::MeRequest {}, &login.token))
        .await
        .expect_err("logged out");
    assert_eq!(after.code(), Code::Unauthenticated);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn role_changes_and_deactivation_apply_on_the_next_call_on_every_replica() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let replica_a = fleet.start("").await?;
    let replica_b = fleet.start("").await?;
    let (a, b) = (channel(&replica_a).await?, channel(&replica_b).await?);
    let admin_password = fleet.create_user("admin", Role::Master).await?;
    let bob_password = fleet.create_user("bob", Role::User).await?;
    let admin = login(&a, "admin", &admin_password).await?;
    let bob = login(&a, "bob", &bob_password).await?;

    // A session from replica A works on replica B (shared Redis).
    let me = auth_client(&b)
        .me(bearer(pb::MeRequest {}, &bob))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::User as i32);
    let denied = auth_client(&b)
        .list_users(bearer(pb::ListUsersRequest::default(), &bob))
        .await
        .expect_err("USER cannot list users");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("requires role MASTER"),
        "{}",
        denied.message()
    );

    // Promoted through A, effective on B at once.
    auth_client(&a)
        .change_role(bearer(
            pb::ChangeRoleRequest {
                username: "bob".to_owned(),
                role: pb::Role::Master.into(),
            },
            &admin,
        ))
        .await?;
    let listed = auth_client(&b)
        .list_users(bearer(pb::ListUsersRequest::default(), &bob))
        .await?
        .into_inner();
    assert_eq!(listed.total_count, 2);

    // Demoted to READER through B, seen by A.
    auth_client(&b)
        .change_role(bearer(
            pb::ChangeRoleRequest {
                username: "bob".to_owned(),
                role: pb::Role::Reader.into(),
            },
            &admin,
        ))
        .await?;
    let me = auth_client(&a)
        .me(bearer(pb::MeRequest {}, &bob))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::Reader as i32);

    // Deactivated through B: the existing token is refused on A.
    let results = auth_client(&b)
        .deactivate_users(bearer(
            pb::DeactivateUsersRequest {
                usernames: vec!["bob".to_owned(), "nobody".to_owned()],
            },
            &admin,
        ))
        .await?
        .into_inner()
        .results;
    assert!(results[0].success, "{results:?}");
    assert_eq!(results[1].error_code, pb::ErrorCode::NotFound as i32);
    let refused = auth_client(&a)
        .me(bearer(pb::MeRequest {}, &bob))
        .await
        .expect_err("deactivated");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let relogin = login(&a, "bob", &bob_password)
        .await
        .expect_err("deactivated login");
    assert_eq!(relogin.code(), Code::PermissionDenied);

    // Reactivated: logs in again.
    auth_client(&a)
        .activate_users(bearer(
            pb::ActivateUsersRequest {
                usernames: vec!["bob".to_owned()],
            },
            &admin,
        ))
        .await?;
    assert!(login(&b, "bob", &bob_password).await.is_ok());

    replica_a.shutdown().await?;
    replica_b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_active_master_cannot_be_demoted_or_deactivated() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("root", Role::Master).await?;
    let token = login(&channel, "root", &password).await?;
    let mut client = auth_client(&channel);

    let demote = client
        .change_role(bearer(
            pb::ChangeRoleRequest {
                username: "root".to_owned(),
                role: pb::Role::User.into(),
            },
            &token,
        ))
        .await
        .expect_err("last master");
    assert_eq!(demote.code(), Code::FailedPrecondition);
    let results = client
        .deactivate_users(bearer(
            pb::DeactivateUsersRequest {
                usernames: vec!["root".to_owned()],
            },
            &token,
        ))
        .await?
        .into_inner()
        .results;
    assert!(!results[0].success);
    assert_eq!(results[0].error_code, pb::ErrorCode::FailedPrecondition as i32);

    // With a second MASTER, either may go, but not both: concurrent demotions
    // are serialized.
    fleet.create_user("second", Role::Master).await?;
    let demote = |username: &'static str| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            client
                .change_role(bearer(
                    pb::ChangeRoleRequest {
                        username: username.to_owned(),
                        role: pb::Role::User.into(),
                    },
                    &token,
                ))
                .await
        }
    };
    let (first, second) = tokio::join!(demote("root"), demote("second"));
    assert!(
        first.is_ok() != second.is_ok(),
        "exactly one demotion succeeds: {first:?} / {second:?}"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn user_management_validates_fields_and_pages() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("admin", Role::Master).await?;
    let admin = login(&channel, "admin", &password).await?;
    let mut client = auth_client(&channel);
    let create = |username: &str, email: &str, password: &str, role: pb::Role| pb::CreateUserRequest {
        username: username.to_owned(),
        email: email.to_owned(),
        name: format!("{username} person"),
        password: password.to_owned(),
        role: role.into(),
    };

    let created = client
        .create_user(bearer(
            create("carol", "carol@example.com", "long-enough-pass", pb::Role::Reader),
            &admin,
        ))
        .await?
        .into_inner()
        .user
        .expect("user");
    assert_eq!((created.username.as_str(), created.active), ("carol", true));

    for (request, code, field) in [
        (
            create("carol", "c2@example.com", "long-enough-pass", pb::Role::Reader),
            Code::AlreadyExists,
            None,
        ),
        (
            create(
                "carol2",
                "CAROL@example.com",
                "long-enough-pass",
                pb::Role::Reader,
            ),
            Code::AlreadyExists,
            None,
        ),
        (
            create("dave", "not-an-email", "long-enough-pass", pb::Role::User),
            Code::InvalidArgument,
            Some("email"),
        ),
        (
            create("dave", "d@example.com", "short", pb::Role::User),
            Code::InvalidArgument,
            Some("password"),
        ),
        (
            create("dave", "d@example.com", "dave-is-my-name", pb::Role::User),
            Code::InvalidArgument,
            Some("password"),
        ),
        (
            create("dave", "d@example.com", "long-enough-pass", pb::Role::Unspecified),
            Code::InvalidArgument,
            Some("role"),
        ),
        (
            create("d ave", "d@example.com", "long-enough-pass", pb::Role::User),
            Code::InvalidArgument,
            Some("username"),
        ),
    ] {
        let status = client
            .create_user(bearer(request, &admin))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        if let Some(field) = field {
            let violations = status
                .get_error_details()
                .bad_request()
                .cloned()
                .expect("field named");
            assert_eq!(violations.field_violations[0].field, field);
        }
        assert!(
            !status.message().contains("long-enough-pass"),
            "no password in errors"
        );
    }

    for index in 0..5 {
        client
            .create_user(bearer(
                create(
                    &format!("page{index}"),
                    &format!("p{index}@example.com"),
                    "long-enough-pass",
                    pb::Role::User,
                ),
                &admin,
            ))
            .await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_users(bearer(
                pb::ListUsersRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    search: "page".to_owned(),
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(page.total_count, 5);
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["page0", "page1", "page2", "page3", "page4"]);
    let readers = client
        .list_users(bearer(
            pb::ListUsersRequest {
                role: pb::Role::Reader.into(),
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert_eq!(
        readers
            .users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["carol"]
    );
    let bad_token = client
        .list_users(bearer(
            pb::ListUsersRequest {
                page_token: "%%%".to_owned(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect_err("bad token");
    assert_eq!(bad_token.code(), Code::InvalidArgument);

    // ChangePassword: needs the old one, keeps this session, ends the others.
    let carol_here = login(&channel, "carol", "long-enough-pass").await?;
    let carol_elsewhere = login(&channel, "carol", "long-enough-pass").await?;
    let wrong_old = client
        .change_password(bearer(
            pb::ChangePasswordRequest {
                old_password: "not-the-password".to_owned(),
                new_password: "a-brand-new-secret".to_owned(),
            },
            &carol_here,
        ))
        .await
        .expect_err("wrong old password");
    assert_eq!(wrong_old.code(), Code::InvalidArgument);
    client
        .change_password(bearer(
            pb::ChangePasswordRequest {
                old_password: "long-enough-pass".to_owned(),
                new_password: "a-brand-new-secret".to_owned(),
            },
            &carol_here,
        ))
        .await?;
    assert!(client.me(bearer(pb::MeRequest {}, &carol_here)).await.is_ok());
    assert_eq!(
        client
            .me(bearer(pb::MeRequest {}, &carol_elsewhere))
            .await
            .expect_err("ended")
            .code(),
        Code::Unauthenticated
    );
    assert!(login(&channel, "carol", "long-enough-pass").await.is_err());

    // ResetPassword (MASTER) ends every session of the user.
    client
        .reset_password(bearer(
            pb::ResetPasswordRequest {
                username: "carol".to_owned(),
                new_password: "reset-by-the-admin".to_owned(),
            },
            &admin,
        ))
        .await?;
    assert_eq!(
        client
            .me(bearer(pb::MeRequest {}, &carol_here))
            .await
            .expect_err("ended")
            .code(),
        Code::Unauthenticated
    );
    assert!(login(&channel, "carol", "reset-by-the-admin").await.is_ok());
    let missing = client
        .reset_password(bearer(
            pb::ResetPasswordRequest {
                username: "nobody".to_owned(),
                new_password: "reset-by-the-admin".to_owned(),
            },
            &admin,
        ))
        .await
        .expect_err("unknown user");
    assert_eq!(missing.code(), Code::NotFound);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("admin", Role::Master).await?;
    let admin = login(&channel, "admin", &password).await?;
    let mut client = auth_client(&channel);
    let request = |name: &str, role: pb::Role, cloud: &str, database: &str| pb::CreateApiKeyRequest {
        name: name.to_owned(),
        role: role.into(),
        expires_at: None,
        allowed_targets: vec![pb::TargetPattern {
            cloud: cloud.to_owned(),
            database: database.to_owned(),
        }],
    };

    for (bad, field) in [
        (request("k", pb::Role::Master, "aws", "app"), "role"),
        (
            request("k", pb::Role::User, "azure", "app"),
            "allowed_targets[0].cloud",
        ),
        (
            request("k", pb::Role::User, "aws", "nope"),
            "allowed_targets[0].database",
        ),
        (request("bad name", pb::Role::User, "aws", "app"), "name"),
    ] {
        let status = client
            .create_api_key(bearer(bad, &admin))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .expect("field")
                .field_violations[0]
                .field,
            field
        );
    }

    let created = client
        .create_api_key(bearer(request("billing", pb::Role::Reader, "aws", "*"), &admin))
        .await?
        .into_inner();
    let key = created.api_key.expect("key");
    assert!(created.secret.starts_with(&format!("pgf_{}_", key.key_prefix)));
    assert_eq!(key.created_by, "user:admin");
    let duplicate = client
        .create_api_key(bearer(request("billing", pb::Role::Reader, "aws", "*"), &admin))
        .await
        .expect_err("live name taken");
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    // Stored only as a digest.
    let pool = fleet.history.pool().await?;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_sha256 FROM pgfleet.api_keys WHERE name = 'billing'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(stored.len(), 32);
    let secret_part = created.secret["pgf_".len() + 12 + 1..].to_owned();
    assert!(!String::from_utf8_lossy(&stored).contains(&secret_part));

    let me = client
        .me(api_key(pb::MeRequest {}, &created.secret))
        .await?
        .into_inner();
    assert_eq!(me.role, pb::Role::Reader as i32);
    let Some(pb::me_response::Principal::ApiKey(shown)) = me.principal else {
        panic!("API key principal expected");
    };
    assert_eq!(shown.allowed_targets.len(), 1);
    assert!(shown.last_used_at.is_some(), "use is recorded");
    // The old system's pair of headers: the key's id, then its secret.
    let id_length = "pgf_".len() + 12;
    for (id, secret) in [
        (&created.secret[..id_length], secret_part.as_str()),
        (
            &created.secret[..id_length],
            "pgf-wrong-secret-of-the-right-length-abcdefghi",
        ),
    ] {
        let mut request = tonic::Request::new(pb::MeRequest {});
        request.metadata_mut().insert("x-api-key", id.parse()?);
        request.metadata_mut().insert("x-api-secret", secret.parse()?);
        let answer = client.me(request).await;
        if secret == secret_part {
            assert_eq!(answer?.into_inner().role, pb::Role::Reader as i32);
        } else {
            assert_eq!(
                answer.map(|_| ()).expect_err("wrong secret").code(),
                Code::Unauthenticated
            );
        }
    }
    let logout = client
        .logout(api_key(pb::LogoutRequest {}, &created.secret))
        .await
        .expect_err("keys do not log out");
    assert_eq!(logout.code(), Code::FailedPrecondition);

    let listed = client
        .list_api_keys(bearer(pb::ListApiKeysRequest::default(), &admin))
        .await?
        .into_inner();
    assert_eq!(listed.api_keys.len(), 1);
    assert!(
        !format!("{listed:?}").contains(&secret_part),
        "listings never show the secret"
    );

    // A tampered secret with the right prefix is refused.
    let mut tampered = created.secret.clone();
    let last = tampered.pop().unwrap_or('A');
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let refused = client
        .me(api_key(pb::MeRequest {}, &tampered))
        .await
        .expect_err("tampered");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Expired keys stop working.
    let expiring = client
        .create_api_key(bearer(request("expiring", pb::Role::User, "*", "*"), &admin))
        .await?
        .into_inner();
    sqlx::query(
        "UPDATE pgfleet.api_keys SET expires_at = now() - interval '1 second' WHERE name = 'expiring'",
    )
    .execute(&pool)
    .await?;
    assert_eq!(
        client
            .me(api_key(pb::MeRequest {}, &expiring.secret))
            .await
            .expect_err("expired")
            .code(),
        Code::Unauthenticated
    );

    let revoked = client
        .revoke_api_key(bearer(pb::RevokeApiKeyRequest { id: key.id.clone() }, &admin))
        .await?
        .into_inner()
        .api_key
        .expect("key");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        client
            .me(api_key(pb::MeRequest {}, &created.secret))
            .await
            .expect_err("revoked")
            .code(),
        Code::Unauthenticated
    );
    let all = client
        .list_api_keys(bearer(
            pb::ListApiKeysRequest {
                include_inactive: true,
                ..Default::default()
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert_eq!(all.api_keys.len(), 2);
    let live = client
        .list_api_keys(bearer(pb::ListApiKeysRequest::default(), &admin))
        .await?
        .into_inner();
    assert!(live.api_keys.is_empty(), "{live:?}");
    let unknown = client
        .revoke_api_key(bearer(
            pb::RevokeApiKeyRequest {
                id: uuid::Uuid::new_v4().to_string(),
            },
            &admin,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    pool.close().await;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_brute_force_is_throttled_per_username_and_address() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet
        .auth_toml
        .push_str("login_attempts_per_username = 3\nlogin_attempts_per_address = 8\nlogin_window = '10m'\n");
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("target", Role::User).await?;
    let attempt = async |username: &str, password: &str| login(&channel, username, password).await;

    for _ in 0..3 {
        let status = attempt("target", "guess-guess-guess").await.expect_err("wrong");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let throttled = attempt("target", &password)
        .await
        .expect_err("throttled even when right");
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert!(
        throttled.message().contains("username"),
        "{}",
        throttled.message()
    );
    let retry = throttled
        .get_error_details()
        .retry_info()
        .cloned()
        .expect("retry hint");
    // The first wait of the exponential backoff (login_backoff_initial,
    // default 1s), not the whole window: throttling never locks out.
    let delay = retry.retry_delay.expect("delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );

    // Spraying other usernames from the same address hits the address limit.
    let mut codes = Vec::new();
    for index in 0..6 {
        codes.push(
            attempt(&format!("spray{index}"), "guess-guess-guess")
                .await
                .expect_err("wrong")
                .code(),
        );
    }
    assert_eq!(codes.last(), Some(&Code::ResourceExhausted), "{codes:?}");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_closed_with_unavailable_and_recovers() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let mut fleet = Fleet::create().await?;
    fleet.redis_url = Some(redis.url());
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("erin", Role::User).await?;
    let token = login(&channel, "erin", &password).await?;
    assert!(
        auth_client(&channel)
            .me(bearer(pb::MeRequest {}, &token))
            .await
            .is_ok()
    );

    redis.stop().await?;
    let during = auth_client(&channel)
        .me(bearer(pb::MeRequest {}, &token))
        .await
        .expect_err("no Redis");
    assert_eq!(during.code(), Code::Unavailable, "{}", during.message());
    assert!(during.message().contains("session store"), "{}", during.message());
    let login_during = login(&channel, "erin", &password).await.expect_err("no Redis");
    assert_eq!(login_during.code(), Code::Unavailable);
    // Health and reflection do not depend on Redis.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    assert_eq!(health.into_inner().status, 1);

    // Back (empty: it persisted nothing): the old session is gone, logins work.
    redis.restart().await?;
    pgfleet_testkit::wait_until(Duration::from_secs(10), Duration::from_millis(100), async || {
        login(&channel, "erin", &password).await.is_ok()
    })
    .await?;
    let token = login(&channel, "erin", &password).await?;
    assert!(
        auth_client(&channel)
            .me(bearer(pb::MeRequest {}, &token))
            .await
            .is_ok()
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_sessions_live_in_the_process() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.redis_url = None;
    fleet
        .auth_toml
        .push_str("sliding_sessions = true\nsession_ttl = '1h'\n");
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("frank", Role::Reader).await?;
    let token = login(&channel, "frank", &password).await?;
    let me = auth_client(&channel)
        .me(bearer(pb::MeRequest {}, &token))
        .await?
        .into_inner();
    let remaining = me.session_expires_at.expect("expiry").seconds - chrono::Utc::now().timestamp();
    assert!((3500..=3600).contains(&remaining), "{remaining}");
    server.shutdown().await?;

    // A new process does not know the old session.
    let server = fleet.start("").await?;
    let channel = support::channel(&server).await?;
    let refused = auth_client(&channel)
        .me(bearer(pb::MeRequest {}, &token))
        .await
        .expect_err("gone");
    assert_eq!(refused.code(), Code::Unauthenticated);
    server.shutdown().await?;
    Ok(())
}
