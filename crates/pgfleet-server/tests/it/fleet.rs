//! FleetService end to end: a real server over real databases (two live
//! clouds, and in some tests a third one nobody listens for), called as
//! users of each role and as API keys.

use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient;
use pgfleet_testkit::{TestDatabase, wait_until};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::{Fleet, api_key, auth_client, bearer, channel, login};

/// Secrets configured on the unreachable cloud; no response may carry them.
const SECRETS: [&str; 2] = ["sekrit-value", "reader-sekrit"];

/// A third cloud, `azure`, whose primary and replica nobody listens on, with
/// every optional database setting filled in. Short pool, probe and retry
/// budgets keep the tests fast.
fn unreachable_cloud(dead_port: u16) -> String {
    format!(
        "[[clouds]]\nname = 'azure'\n\
         [[clouds.databases]]\nname = 'app'\nlabel = 'Azure App'\nhost = '127.0.0.1'\nport = {dead_port}\n\
         user = 'fleet_owner'\npassword = 'sekrit-value'\ndatabase = 'nowhere'\nsslmode = 'disable'\n\
         schemas = ['public', 'sales']\ndefault_schema = 'sales'\n\
         reader_user = 'fleet_reader'\nreader_password = 'reader-sekrit'\nread_preference = 'replica'\n\
         region = 'westeurope'\nread_only = true\nmax_replica_lag = '5s'\n\
         pool = {{ acquire_timeout = '300ms' }}\n\
         [[clouds.databases.replicas]]\nname = 'ro-1'\nhost = '127.0.0.2'\n\
         [health]\ninterval = '200ms'\nprobe_timeout = '1s'\n\
         [retry]\nmax_attempts = 1\n"
    )
}

fn fleet_client(channel: &Channel) -> FleetServiceClient<Channel> {
    FleetServiceClient::new(channel.clone())
}

fn target(cloud: &str, database: &str) -> Option<pb::Target> {
    Some(pb::Target {
        cloud: cloud.to_owned(),
        database: database.to_owned(),
    })
}

fn database<'a>(fleet: &'a Fleet, cloud: &str, name: &str) -> &'a TestDatabase {
    fleet
        .databases
        .iter()
        .find(|(c, n, _)| c == cloud && n == name)
        .map(|(_, _, db)| db)
        .expect("configured test database")
}

/// The field an INVALID_ARGUMENT status names in its BadRequest detail.
fn bad_field(status: &Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .expect("BadRequest detail")
        .field_violations[0]
        .field
        .clone()
}

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret:?} leaked: {text}");
    }
}

/// Logs in a new user with `role`; returns its token.
async fn user_token(fleet: &Fleet, channel: &Channel, name: &str, role: Role) -> anyhow::Result<String> {
    let password = fleet.create_user(name, role).await?;
    Ok(login(channel, name, &password).await?)
}

/// Creates a READER API key limited to `patterns`; returns its secret.
async fn reader_key(
    channel: &Channel,
    master: &str,
    name: &str,
    patterns: &[(&str, &str)],
) -> anyhow::Result<String> {
    let created = auth_client(channel)
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: name.to_owned(),
                role: pb::Role::Reader.into(),
                expires_at: None,
                allowed_targets: patterns
                    .iter()
                    .map(|(cloud, database)| pb::TargetPattern {
                        cloud: (*cloud).to_owned(),
                        database: (*database).to_owned(),
                    })
                    .collect(),
            },
            master,
        ))
        .await?
        .into_inner();
    Ok(created.secret)
}

fn names(response: &pb::GetConfigurationResponse) -> Vec<(String, Vec<String>)> {
    response
        .clouds
        .iter()
        .map(|cloud| {
            (
                cloud.name.clone(),
                cloud.databases.iter().map(|d| d.name.clone()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_shows_connections_to_master_only_and_passwords_to_no_one() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    // The live clouds without reader_user: has_reader_login must say so.
    fleet.reader_login = false;
    let dead_port = pgfleet_testkit::free_port()?;
    let server = fleet.start(&unreachable_cloud(dead_port)).await?;
    let channel = channel(&server).await?;
    let master = user_token(&fleet, &channel, "boss", Role::Master).await?;
    let user = user_token(&fleet, &channel, "dev", Role::User).await?;
    let reader = user_token(&fleet, &channel, "viewer", Role::Reader).await?;
    let mut client = fleet_client(&channel);

    let expected_names = vec![
        ("aws".to_owned(), vec!["app".to_owned(), "analytics".to_owned()]),
        ("gcp".to_owned(), vec!["app".to_owned(), "analytics".to_owned()]),
        ("azure".to_owned(), vec!["app".to_owned()]),
    ];
    for token in [&reader, &user] {
        let response = client
            .get_configuration(bearer(pb::GetConfigurationRequest {}, token))
            .await?
            .into_inner();
        let text = format!("{response:?}");
        assert_no_secret(&text);
        assert_eq!(names(&response), expected_names, "configuration order");
        for database in response.clouds.iter().flat_map(|c| &c.databases) {
            assert!(database.connection.is_none(), "{database:?}");
            assert!(
                database.replicas.iter().all(|r| r.connection.is_none()),
                "{database:?}"
            );
        }
        assert!(!text.contains("127.0.0.2"), "replica host shown: {text}");
        assert!(!text.contains("fleet_owner"), "login shown: {text}");

        // Everything but connections is there for every role.
        let azure = &response.clouds[2].databases[0];
        assert_eq!(azure.label, "Azure App");
        assert_eq!(azure.schemas, ["public", "sales"]);
        assert_eq!(azure.default_schema, "sales");
        assert_eq!(azure.read_preference, pb::ReadPreference::Replica as i32);
        assert!(azure.has_reader_login);
        assert_eq!(azure.region, "westeurope");
        assert!(azure.read_only);
        assert_eq!(azure.max_replica_lag.as_ref().map(|lag| lag.seconds), Some(5));
        assert_eq!(azure.replicas.len(), 1);
        assert_eq!(azure.replicas[0].name, "ro-1");
        let aws_app = &response.clouds[0].databases[0];
        assert_eq!(aws_app.label, "app", "the name stands in for a missing label");
        assert_eq!(aws_app.default_schema, "public");
        assert_eq!(aws_app.read_preference, pb::ReadPreference::Primary as i32);
        assert!(!aws_app.has_reader_login);
        assert!(aws_app.replicas.is_empty());
        assert!(aws_app.region.is_empty() && !aws_app.read_only && aws_app.max_replica_lag.is_none());
        assert_eq!(
            response.clouds.iter().map(|c| c.primary).collect::<Vec<_>>(),
            [true, false, false]
        );
        let limits = response.limits.expect("limits");
        assert_eq!(limits.default_timeout.map(|d| d.seconds), Some(30));
        assert_eq!(limits.max_timeout.map(|d| d.seconds), Some(300));
        assert_eq!(limits.max_query_bytes, 1024 * 1024);
        assert_eq!(limits.max_rows, 10_000);
    }

    let response = client
        .get_configuration(bearer(pb::GetConfigurationRequest {}, &master))
        .await?
        .into_inner();
    assert_no_secret(&format!("{response:?}"));
    assert_eq!(names(&response), expected_names);
    let aws_app = database(&fleet, "aws", "app");
    let shown = response.clouds[0].databases[0]
        .connection
        .clone()
        .expect("MASTER sees connections");
    assert_eq!(
        shown,
        pb::ConnectionInfo {
            host: aws_app.host().to_owned(),
            port: u32::from(aws_app.port()),
            user: aws_app.user().to_owned(),
            database: aws_app.name().to_owned(),
            sslmode: "disable".to_owned(),
        }
    );
    let azure = &response.clouds[2].databases[0];
    assert_eq!(
        azure.replicas[0].connection,
        Some(pb::ConnectionInfo {
            host: "127.0.0.2".to_owned(),
            // Unset replica fields come from the primary.
            port: u32::from(dead_port),
            user: "fleet_owner".to_owned(),
            database: "nowhere".to_owned(),
            sslmode: "disable".to_owned(),
        })
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_see_and_inspect_only_their_allow_list() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let master = user_token(&fleet, &channel, "boss", Role::Master).await?;
    let aws_only = reader_key(&channel, &master, "aws-sync", &[("aws", "*")]).await?;
    let analytics_only = reader_key(&channel, &master, "bi", &[("gcp", "analytics")]).await?;
    let mut client = fleet_client(&channel);

    let config = client
        .get_configuration(api_key(pb::GetConfigurationRequest {}, &aws_only))
        .await?
        .into_inner();
    assert_eq!(
        names(&config),
        [("aws".to_owned(), vec!["app".to_owned(), "analytics".to_owned()])],
        "clouds outside the allow-list are not shown at all"
    );
    let config = client
        .get_configuration(api_key(pb::GetConfigurationRequest {}, &analytics_only))
        .await?
        .into_inner();
    assert_eq!(names(&config), [("gcp".to_owned(), vec!["analytics".to_owned()])]);

    let health = client
        .get_health(api_key(pb::GetHealthRequest::default(), &aws_only))
        .await?
        .into_inner();
    let seen: Vec<_> = health
        .targets
        .iter()
        .filter_map(|t| t.target.as_ref())
        .map(|t| (t.cloud.as_str(), t.database.as_str()))
        .collect();
    assert_eq!(seen, [("aws", "analytics"), ("aws", "app")]);
    let outside = client
        .get_health(api_key(
            pb::GetHealthRequest {
                cloud: "gcp".to_owned(),
                database: String::new(),
            },
            &aws_only,
        ))
        .await?
        .into_inner();
    assert!(outside.targets.is_empty(), "{outside:?}");

    let allowed = client
        .list_schemas(api_key(
            pb::ListSchemasRequest {
                target: target("aws", "analytics"),
                ..Default::default()
            },
            &aws_only,
        ))
        .await?
        .into_inner();
    assert!(allowed.schemas.iter().any(|s| s.name == "public"));
    let denied = client
        .list_schemas(api_key(
            pb::ListSchemasRequest {
                target: target("gcp", "app"),
                ..Default::default()
            },
            &aws_only,
        ))
        .await
        .expect_err("outside the allow-list");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("gcp/app"), "{}", denied.message());
    let denied = client
        .list_tables(api_key(
            pb::ListTablesRequest {
                target: target("gcp", "app"),
                ..Default::default()
            },
            &analytics_only,
        ))
        .await
        .expect_err("outside the allow-list");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    client
        .list_tables(api_key(
            pb::ListTablesRequest {
                target: target("gcp", "analytics"),
                ..Default::default()
            },
            &analytics_only,
        ))
        .await?;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_every_member_and_filters_by_name() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet
        .start(&unreachable_cloud(pgfleet_testkit::free_port()?))
        .await?;
    let channel = channel(&server).await?;
    let reader = user_token(&fleet, &channel, "viewer", Role::Reader).await?;
    let health = async |cloud: &str, database: &str| {
        fleet_client(&channel)
            .get_health(bearer(
                pb::GetHealthRequest {
                    cloud: cloud.to_owned(),
                    database: database.to_owned(),
                },
                &reader,
            ))
            .await
            .map(|response| response.into_inner().targets)
    };

    // Probes every 200ms: the live targets turn healthy, the dead ones keep
    // failing and count it.
    wait_until(Duration::from_secs(15), Duration::from_millis(100), async || {
        let targets = health("", "").await?;
        let settled = targets.iter().all(|t| {
            let dead = t.target.as_ref().is_some_and(|t| t.cloud == "azure");
            if dead {
                t.status == pb::HealthStatus::Unhealthy as i32 && t.consecutive_failures >= 2
            } else {
                t.status == pb::HealthStatus::Healthy as i32
            }
        });
        Ok::<_, Status>(settled)
    })
    .await?;

    let targets = health("", "").await?;
    assert_no_secret(&format!("{targets:?}"));
    let members: Vec<(String, String, String)> = targets
        .iter()
        .map(|t| {
            let target = t.target.clone().unwrap_or_default();
            (target.cloud, target.database, t.replica.clone())
        })
        .collect();
    let member = |cloud: &str, database: &str, replica: &str| {
        (cloud.to_owned(), database.to_owned(), replica.to_owned())
    };
    assert_eq!(
        members,
        [
            member("aws", "analytics", ""),
            member("aws", "app", ""),
            member("azure", "app", ""),
            member("azure", "app", "ro-1"),
            member("gcp", "analytics", ""),
            member("gcp", "app", ""),
        ]
    );
    for t in &targets {
        assert!(t.last_checked_at.is_some(), "{t:?}");
        assert_eq!(t.pool.as_ref().map(|p| p.max_size), Some(10), "{t:?}");
        if t.status == pb::HealthStatus::Healthy as i32 {
            assert!(t.latency.is_some(), "{t:?}");
            assert_eq!(t.consecutive_failures, 0, "{t:?}");
        } else {
            assert!(!t.last_error.is_empty(), "{t:?}");
            assert!(t.last_error_at.is_some(), "{t:?}");
        }
    }

    assert_eq!(health("azure", "").await?.len(), 2, "primary and replica");
    assert_eq!(health("", "app").await?.len(), 4);
    let one = health("gcp", "analytics").await?;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].target, target("gcp", "analytics"));
    for (cloud, database, named) in [
        ("nope", "", "nope"),
        ("", "nowhere-db", "nowhere-db"),
        ("azure", "analytics", "analytics"),
    ] {
        let status = health(cloud, database).await.expect_err("unknown name");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains(named), "{}", status.message());
    }

    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_schemas_marks_configured_ones_hides_system_ones_and_pages() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let pool = database(&fleet, "aws", "app").pool().await?;
    sqlx::raw_sql("CREATE SCHEMA sales; CREATE SCHEMA zeta; CREATE SCHEMA \"Mixed Case\";")
        .execute(&pool)
        .await?;
    pool.close().await;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let reader = user_token(&fleet, &channel, "viewer", Role::Reader).await?;
    let mut client = fleet_client(&channel);
    let list = |page_size: i32, page_token: String, include_system: bool| {
        bearer(
            pb::ListSchemasRequest {
                target: target("aws", "app"),
                page_size,
                page_token,
                include_system,
            },
            &reader,
        )
    };

    let all = client
        .list_schemas(list(0, String::new(), false))
        .await?
        .into_inner();
    assert!(all.next_page_token.is_empty(), "one page holds them all");
    let names: Vec<&str> = all.schemas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["Mixed Case", "public", "sales", "zeta"],
        "ordered by name"
    );
    let public = &all.schemas[1];
    assert!(public.configured, "{public:?}");
    assert!(!public.owner.is_empty());
    assert!(
        all.schemas
            .iter()
            .filter(|s| s.name != "public")
            .all(|s| !s.configured)
    );

    let with_system = client
        .list_schemas(list(0, String::new(), true))
        .await?
        .into_inner();
    let system: Vec<&str> = with_system.schemas.iter().map(|s| s.name.as_str()).collect();
    for expected in ["information_schema", "pg_catalog", "pg_toast", "public", "zeta"] {
        assert!(system.contains(&expected), "{expected} missing from {system:?}");
    }

    // One schema per page: the same list, in the same order.
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = client.list_schemas(list(1, token, false)).await?.into_inner();
        assert!(page.schemas.len() <= 1);
        paged.extend(page.schemas.into_iter().map(|s| s.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "pagination ends");
    assert_eq!(paged, names);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_tables_pages_through_tables_with_kinds_columns_and_primary_keys() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let pool = database(&fleet, "aws", "app").pool().await?;
    sqlx::raw_sql(
        "CREATE TABLE orders (region text NOT NULL, id integer NOT NULL, \
           note varchar(64) DEFAULT 'none', amount numeric(10,2), PRIMARY KEY (id, region)); \
         COMMENT ON TABLE orders IS 'Customer orders'; \
         INSERT INTO orders VALUES ('eu', 1, 'a', 1), ('eu', 2, 'b', 2), ('us', 3, 'c', 3); \
         ANALYZE orders; \
         CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), line text); \
         CREATE VIEW recent_orders AS SELECT id, region FROM orders; \
         CREATE MATERIALIZED VIEW order_totals AS SELECT region, count(*) AS n FROM orders GROUP BY region; \
         CREATE TABLE events (id bigint, at date) PARTITION BY RANGE (at); \
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE TABLE filler_1 (); CREATE TABLE filler_2 (); CREATE TABLE filler_3 (); \
         CREATE TABLE filler_4 (); CREATE TABLE filler_5 (); \
         CREATE SCHEMA sales; CREATE TABLE sales.leads (id int PRIMARY KEY); \
         CREATE SEQUENCE not_a_table; CREATE INDEX orders_note ON orders (note);",
    )
    .execute(&pool)
    .await?;
    pool.close().await;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    // MASTER: the test lists a schema the database does not configure
    // (below MASTER only configured schemas are listed).
    let master = user_token(&fleet, &channel, "boss", Role::Master).await?;
    let mut client = fleet_client(&channel);
    let list = |schema: &str, page_size: i32, page_token: String, include_columns: bool| {
        bearer(
            pb::ListTablesRequest {
                target: target("aws", "app"),
                schema: schema.to_owned(),
                page_size,
                page_token,
                include_columns,
            },
            &master,
        )
    };

    // Four per page over eleven relations, in the default schema (public).
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = client.list_tables(list("", 4, token, false)).await?.into_inner();
        token = page.next_page_token.clone();
        pages.push(page);
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        pages.iter().map(|p| p.tables.len()).collect::<Vec<_>>(),
        [4, 4, 3]
    );
    let tables: Vec<&pb::TableInfo> = pages.iter().flat_map(|p| &p.tables).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "audit_log",
            "events",
            "events_2024",
            "filler_1",
            "filler_2",
            "filler_3",
            "filler_4",
            "filler_5",
            "order_totals",
            "orders",
            "recent_orders",
        ],
        "no sequence or index, ordered by name"
    );
    let by_name = |name: &str| *tables.iter().find(|t| t.name == name).expect("listed");
    assert!(
        tables
            .iter()
            .all(|t| t.schema == "public" && t.columns.is_empty())
    );
    let orders = by_name("orders");
    assert_eq!(orders.kind, pb::TableKind::Table as i32);
    assert!(orders.has_primary_key);
    assert_eq!(orders.comment, "Customer orders");
    assert_eq!(orders.estimated_rows, 3, "analyzed");
    let audit = by_name("audit_log");
    assert!(!audit.has_primary_key);
    assert_eq!(audit.estimated_rows, -1, "never analyzed");
    assert_eq!(audit.comment, "");
    assert_eq!(by_name("events").kind, pb::TableKind::PartitionedTable as i32);
    assert_eq!(by_name("recent_orders").kind, pb::TableKind::View as i32);
    assert_eq!(
        by_name("order_totals").kind,
        pb::TableKind::MaterializedView as i32
    );

    // Columns, in order, with the primary key's own order (id, region).
    let page = client
        .list_tables(list("public", 100, String::new(), true))
        .await?
        .into_inner();
    assert!(page.next_page_token.is_empty());
    let orders = page.tables.iter().find(|t| t.name == "orders").expect("orders");
    let columns: Vec<(&str, &str, u32, bool, u32, &str)> = orders
        .columns
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.type_name.as_str(),
                c.type_oid,
                c.nullable,
                c.primary_key_position,
                c.default_expression.as_str(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("region", "text", 25, false, 2, ""),
            ("id", "integer", 23, false, 1, ""),
            (
                "note",
                "character varying(64)",
                1043,
                true,
                0,
                "'none'::character varying"
            ),
            ("amount", "numeric(10,2)", 1700, true, 0, ""),
        ]
    );
    let view = page
        .tables
        .iter()
        .find(|t| t.name == "recent_orders")
        .expect("view");
    assert_eq!(
        view.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["id", "region"]
    );
    assert!(view.columns.iter().all(|c| c.primary_key_position == 0));

    // Another schema, by name.
    let sales = client
        .list_tables(list("sales", 0, String::new(), true))
        .await?
        .into_inner();
    assert_eq!(sales.tables.len(), 1);
    assert_eq!(sales.tables[0].schema, "sales");
    assert_eq!(sales.tables[0].name, "leads");
    assert_eq!(sales.tables[0].columns[0].primary_key_position, 1);

    // A token only continues the listing it came from.
    let first = client
        .list_tables(list("", 2, String::new(), false))
        .await?
        .into_inner();
    let status = client
        .list_tables(list("sales", 2, first.next_page_token.clone(), false))
        .await
        .expect_err("token of another schema");
    assert_eq!(bad_field(&status), "page_token");
    let status = client
        .list_schemas(bearer(
            pb::ListSchemasRequest {
                target: target("aws", "app"),
                page_token: first.next_page_token,
                ..Default::default()
            },
            &master,
        ))
        .await
        .expect_err("token of another listing");
    assert_eq!(bad_field(&status), "page_token");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_rejects_bad_requests_and_unknown_targets() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let reader = user_token(&fleet, &channel, "viewer", Role::Reader).await?;
    let mut client = fleet_client(&channel);
    let tables = |target: Option<pb::Target>, schema: &str, page_size: i32, page_token: &str| {
        bearer(
            pb::ListTablesRequest {
                target,
                schema: schema.to_owned(),
                page_size,
                page_token: page_token.to_owned(),
                include_columns: false,
            },
            &reader,
        )
    };

    for (request, field) in [
        (tables(None, "", 0, ""), "target"),
        (tables(target("", "app"), "", 0, ""), "target.cloud"),
        (tables(target("aws", ""), "", 0, ""), "target.database"),
        (tables(target("aws", "app"), "", -1, ""), "page_size"),
        (tables(target("aws", "app"), "", 0, "!!not-a-token"), "page_token"),
        // Valid base64url, but not one of ours.
        (tables(target("aws", "app"), "", 0, "aGVsbG8"), "page_token"),
    ] {
        let status = client.list_tables(request).await.expect_err("invalid");
        assert_eq!(bad_field(&status), field, "{status:?}");
    }
    let status = client
        .list_schemas(bearer(
            pb::ListSchemasRequest {
                target: target("aws", "app"),
                page_size: -5,
                ..Default::default()
            },
            &reader,
        ))
        .await
        .expect_err("negative page size");
    assert_eq!(bad_field(&status), "page_size");

    for (request, named) in [
        (tables(target("azure", "app"), "", 0, ""), "azure"),
        (tables(target("aws", "nope"), "", 0, ""), "nope"),
    ] {
        let status = client.list_tables(request).await.expect_err("not found");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains(named), "{}", status.message());
    }
    // Below MASTER only configured schemas; MASTER learns it does not exist.
    let status = client
        .list_tables(tables(target("aws", "app"), "no_such_schema", 0, ""))
        .await
        .expect_err("not configured");
    assert_eq!(bad_field(&status), "schema", "{status:?}");
    let master = user_token(&fleet, &channel, "boss", Role::Master).await?;
    let status = client
        .list_tables(bearer(
            pb::ListTablesRequest {
                target: target("aws", "app"),
                schema: "no_such_schema".to_owned(),
                ..Default::default()
            },
            &master,
        ))
        .await
        .expect_err("not found");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("no_such_schema"),
        "{}",
        status.message()
    );
    let status = client
        .list_schemas(bearer(
            pb::ListSchemasRequest {
                target: target("aws", "nope"),
                ..Default::default()
            },
            &reader,
        ))
        .await
        .expect_err("unknown database");
    assert_eq!(status.code(), Code::NotFound);

    // A huge page size is refused with the field named, like every list
    // call's; the maximum itself is accepted.
    let status = client
        .list_tables(tables(target("aws", "app"), "", i32::MAX, ""))
        .await
        .expect_err("page_size above 1000");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "page_size");
    let largest = client
        .list_tables(tables(target("aws", "app"), "", 1000, ""))
        .await?;
    assert!(largest.into_inner().next_page_token.is_empty());
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_target_is_unavailable_by_name_and_the_rest_still_answer() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet
        .start(&unreachable_cloud(pgfleet_testkit::free_port()?))
        .await?;
    let channel = channel(&server).await?;
    let master = user_token(&fleet, &channel, "boss", Role::Master).await?;
    let mut client = fleet_client(&channel);

    let status = client
        .list_schemas(bearer(
            pb::ListSchemasRequest {
                target: target("azure", "app"),
                ..Default::default()
            },
            &master,
        ))
        .await
        .expect_err("nobody listens");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("azure/app"), "{}", status.message());
    assert_no_secret(&format!("{status:?}"));

    let status = client
        .list_tables(bearer(
            pb::ListTablesRequest {
                target: target("azure", "app"),
                include_columns: true,
                ..Default::default()
            },
            &master,
        ))
        .await
        .expect_err("nobody listens");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("azure/app"), "{}", status.message());
    assert_no_secret(&format!("{status:?}"));

    // The live clouds are not affected.
    let live = client
        .list_schemas(bearer(
            pb::ListSchemasRequest {
                target: target("gcp", "app"),
                ..Default::default()
            },
            &master,
        ))
        .await?
        .into_inner();
    assert!(live.schemas.iter().any(|s| s.name == "public" && s.configured));
    server.shutdown().await?;
    Ok(())
}
