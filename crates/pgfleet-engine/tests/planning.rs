//! Planning refusals as a table: one request, one caller, the refusal it
//! gets (or none). `Plan::new` decides before any connection is taken, so
//! these run against a configuration only; the pools are never used.

use std::path::Path;
use std::time::Duration;

use pgfleet_config::{FileFormat, FleetConfig, Inputs, ProcessEnv};
use pgfleet_engine::RequestError;
use pgfleet_engine::identity::{Identity, Principal, Role, TargetPattern};
use pgfleet_engine::query::{ExecuteSpec, Param, ParamValue, Plan, Scope, StatementSpec, parser};
use pgfleet_registry::{Registry, Target};
use uuid::Uuid;

/// Two clouds with database `app` (schemas public and sales, a reader
/// login on aws only), and gcp alone with `analytics` (configured read_only).
fn fleet() -> FleetConfig {
    let text = "[history]\nhost='127.0.0.1'\nuser='postgres'\ndatabase='postgres'\n\
        [query]\nmax_timeout='60s'\n\
        [[clouds]]\nname='aws'\n\
        [[clouds.databases]]\nname='app'\nhost='127.0.0.1'\nuser='postgres'\ndatabase='app'\nsslmode='disable'\n\
        schemas=['public','sales']\nreader_user='app_reader'\n\
        [[clouds]]\nname='gcp'\n\
        [[clouds.databases]]\nname='app'\nhost='127.0.0.1'\nuser='postgres'\ndatabase='app'\nsslmode='disable'\n\
        schemas=['public','sales']\n\
        [[clouds.databases]]\nname='analytics'\nhost='127.0.0.1'\nuser='postgres'\ndatabase='analytics'\n\
        sslmode='disable'\nreader_user='analytics_reader'\nread_only=true\nregion='europe-west1'\n";
    pgfleet_config::load_str(
        text,
        FileFormat::Toml,
        Path::new("planning.toml"),
        &Inputs {
            variables: &ProcessEnv,
            overrides: Vec::new(),
        },
    )
    .unwrap_or_else(|e| panic!("test config: {e}"))
    .config
}

fn user(role: Role) -> Identity {
    Identity {
        principal: Principal::User {
            id: Uuid::nil(),
            username: "alice".to_owned(),
        },
        role,
        session: None,
    }
}

fn api_key(role: Role, cloud: &str, database: &str) -> Identity {
    Identity {
        principal: Principal::ApiKey {
            id: Uuid::nil(),
            name: "billing".to_owned(),
            allowed_targets: vec![TargetPattern {
                cloud: cloud.to_owned(),
                database: database.to_owned(),
            }],
        },
        role,
        session: None,
    }
}

/// A transaction on `app` given statement by statement, one integer
/// parameter each.
fn statements_on_app(queries: &[&str]) -> ExecuteSpec {
    ExecuteSpec {
        database: "app".to_owned(),
        statements: queries
            .iter()
            .enumerate()
            .map(|(index, query)| StatementSpec {
                query: (*query).to_owned(),
                params: vec![Param {
                    value: ParamValue::Int(i64::try_from(index).unwrap_or_default()),
                    type_name: None,
                }],
            })
            .collect(),
        ..ExecuteSpec::default()
    }
}

fn on_app(query: &str) -> ExecuteSpec {
    ExecuteSpec {
        query: query.to_owned(),
        database: "app".to_owned(),
        ..ExecuteSpec::default()
    }
}

/// What a refusal is, without its wording (asserted elsewhere).
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Invalid(&'static str),
    NotFound,
    PermissionDenied,
    FailedPrecondition,
}

fn kind(error: &RequestError) -> String {
    match error {
        RequestError::InvalidArgument { field, .. } => format!("Invalid({field})"),
        other => format!("{other:?}")
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

fn expected(refused: &Refused) -> String {
    match refused {
        Refused::Invalid(field) => format!("Invalid({field})"),
        other => format!("{other:?}"),
    }
}

async fn plan(
    spec: &ExecuteSpec,
    identity: &Identity,
    config: &FleetConfig,
    registry: &Registry,
) -> Result<Plan, RequestError> {
    let analysis = parser::analyze(&spec.text()).await?;
    Plan::new(spec, identity, config, registry, analysis)
}

#[tokio::test]
async fn every_refusal_is_decided_before_anything_runs() {
    let config = fleet();
    let registry = Registry::new(&config);
    let explicit = |targets: &[(&str, &str)]| ExecuteSpec {
        query: "SELECT 1".to_owned(),
        scope: Scope::Targets(targets.iter().map(|(c, d)| Target::new(*c, *d)).collect()),
        ..ExecuteSpec::default()
    };
    let cases: Vec<(&str, ExecuteSpec, Identity, Option<Refused>)> = vec![
        (
            "a read by a reader",
            on_app("SELECT 1"),
            user(Role::Reader),
            Some(Refused::FailedPrecondition),
        ),
        (
            "a read by a reader on aws, which has a reader login",
            ExecuteSpec {
                scope: Scope::Cloud("aws".to_owned()),
                ..on_app("SELECT 1")
            },
            user(Role::Reader),
            None,
        ),
        (
            "an empty text",
            on_app("  \n"),
            user(Role::Master),
            Some(Refused::Invalid("query")),
        ),
        (
            "only a comment",
            on_app("-- nothing"),
            user(Role::Master),
            Some(Refused::Invalid("query")),
        ),
        (
            "a syntax error",
            on_app("SELEC 1"),
            user(Role::Master),
            Some(Refused::Invalid("query")),
        ),
        (
            "BEGIN in the text",
            on_app("BEGIN; SELECT 1"),
            user(Role::Master),
            Some(Refused::Invalid("query")),
        ),
        (
            "VACUUM with another statement",
            on_app("VACUUM; SELECT 1"),
            user(Role::Master),
            Some(Refused::Invalid("query")),
        ),
        (
            "a write by a reader (aws has its login)",
            ExecuteSpec {
                scope: Scope::Cloud("aws".to_owned()),
                ..on_app("DELETE FROM t")
            },
            user(Role::Reader),
            Some(Refused::PermissionDenied),
        ),
        (
            "EXPLAIN ANALYZE of a write by a reader",
            ExecuteSpec {
                scope: Scope::Cloud("aws".to_owned()),
                ..on_app("EXPLAIN ANALYZE DELETE FROM t")
            },
            user(Role::Reader),
            Some(Refused::PermissionDenied),
        ),
        (
            "a write by a user",
            on_app("UPDATE t SET a = 1 WHERE id = 2"),
            user(Role::User),
            None,
        ),
        (
            "DDL by a user",
            on_app("CREATE TABLE t (a int)"),
            user(Role::User),
            Some(Refused::PermissionDenied),
        ),
        (
            "DROP TABLE by a user",
            on_app("DROP TABLE t"),
            user(Role::User),
            Some(Refused::PermissionDenied),
        ),
        (
            "DROP TABLE by a master, unconfirmed",
            on_app("DROP TABLE t"),
            user(Role::Master),
            Some(Refused::FailedPrecondition),
        ),
        (
            "DROP TABLE by a master, confirmed",
            ExecuteSpec {
                confirm_dangerous: true,
                ..on_app("DROP TABLE t")
            },
            user(Role::Master),
            None,
        ),
        (
            "a write marked read_only",
            ExecuteSpec {
                read_only: true,
                ..on_app("INSERT INTO t VALUES (1)")
            },
            user(Role::Master),
            Some(Refused::Invalid("read_only")),
        ),
        (
            "parameters with two statements",
            ExecuteSpec {
                params: vec![Param {
                    value: ParamValue::Int(1),
                    type_name: None,
                }],
                ..on_app("SELECT $1; SELECT 2")
            },
            user(Role::Master),
            Some(Refused::Invalid("params")),
        ),
        (
            "no database",
            on_app("SELECT 1").with_database(""),
            user(Role::Master),
            Some(Refused::Invalid("database")),
        ),
        (
            "an unknown database",
            on_app("SELECT 1").with_database("nope"),
            user(Role::Master),
            Some(Refused::NotFound),
        ),
        (
            "an unknown cloud",
            ExecuteSpec {
                scope: Scope::Cloud("azure".to_owned()),
                ..on_app("SELECT 1")
            },
            user(Role::Master),
            Some(Refused::NotFound),
        ),
        (
            "a cloud without the database",
            ExecuteSpec {
                scope: Scope::Cloud("aws".to_owned()),
                ..on_app("SELECT 1").with_database("analytics")
            },
            user(Role::Master),
            Some(Refused::NotFound),
        ),
        (
            "a schema not configured",
            ExecuteSpec {
                pg_schema: "secret".to_owned(),
                ..on_app("SELECT 1")
            },
            user(Role::Master),
            Some(Refused::Invalid("pg_schema")),
        ),
        (
            "a timeout above query.max_timeout",
            ExecuteSpec {
                timeout: Some(Duration::from_secs(61)),
                ..on_app("SELECT 1")
            },
            user(Role::Master),
            Some(Refused::Invalid("timeout")),
        ),
        (
            "an explicit list",
            explicit(&[("aws", "app"), ("gcp", "analytics")]),
            user(Role::Master),
            None,
        ),
        (
            "an empty list",
            explicit(&[]),
            user(Role::Master),
            Some(Refused::Invalid("targets.targets")),
        ),
        (
            "a target listed twice",
            explicit(&[("aws", "app"), ("aws", "app")]),
            user(Role::Master),
            Some(Refused::Invalid("targets.targets[1].database")),
        ),
        (
            "a target without a cloud",
            explicit(&[("", "app")]),
            user(Role::Master),
            Some(Refused::Invalid("targets.targets[0].cloud")),
        ),
        (
            "an unknown target",
            explicit(&[("aws", "analytics")]),
            user(Role::Master),
            Some(Refused::NotFound),
        ),
        (
            "a list with a database field",
            ExecuteSpec {
                database: "app".to_owned(),
                ..explicit(&[("aws", "app")])
            },
            user(Role::Master),
            Some(Refused::Invalid("database")),
        ),
        (
            "an API key inside its allow-list",
            ExecuteSpec {
                scope: Scope::Cloud("aws".to_owned()),
                ..on_app("SELECT 1")
            },
            api_key(Role::User, "aws", "*"),
            None,
        ),
        (
            "an API key past its allow-list",
            on_app("SELECT 1"),
            api_key(Role::User, "aws", "*"),
            Some(Refused::PermissionDenied),
        ),
        (
            "an API key naming an unknown database gets the same answer",
            on_app("SELECT 1").with_database("nope"),
            api_key(Role::User, "aws", "*"),
            Some(Refused::PermissionDenied),
        ),
        (
            "a write to a copy configured read_only",
            on_app("INSERT INTO events VALUES (1)").with_database("analytics"),
            user(Role::Master),
            Some(Refused::FailedPrecondition),
        ),
        (
            "a read of a copy configured read_only",
            on_app("SELECT 1").with_database("analytics"),
            user(Role::User),
            None,
        ),
        (
            "statements, each with its own parameters",
            statements_on_app(&[
                "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
                "UPDATE accounts SET balance = balance + $1 WHERE id = 2;",
            ]),
            user(Role::User),
            None,
        ),
        (
            "statements and a query",
            ExecuteSpec {
                query: "SELECT 1".to_owned(),
                ..statements_on_app(&["SELECT $1::int"])
            },
            user(Role::User),
            Some(Refused::Invalid("query")),
        ),
        (
            "statements and top-level params",
            ExecuteSpec {
                params: vec![Param {
                    value: ParamValue::Null,
                    type_name: None,
                }],
                ..statements_on_app(&["SELECT $1::int"])
            },
            user(Role::User),
            Some(Refused::Invalid("params")),
        ),
        (
            "a second statement hidden in an entry",
            statements_on_app(&["SELECT $1::int", "SELECT $1::int; DELETE FROM accounts"]),
            user(Role::Master),
            Some(Refused::Invalid("statements[1].query")),
        ),
        (
            "an entry without a statement",
            statements_on_app(&["-- nothing here", "SELECT $1::int"]),
            user(Role::User),
            Some(Refused::Invalid("statements[0].query")),
        ),
        (
            "an entry that does not parse",
            statements_on_app(&["SELECT $1::int", "SELEC 2"]),
            user(Role::User),
            Some(Refused::Invalid("statements[1].query")),
        ),
        (
            "an unterminated quote cannot swallow the next entry",
            statements_on_app(&["SELECT 'open", "SELECT $1::int"]),
            user(Role::User),
            Some(Refused::Invalid("statements[0].query")),
        ),
        (
            "transaction control in an entry",
            statements_on_app(&["SELECT $1::int", "COMMIT"]),
            user(Role::User),
            Some(Refused::Invalid("statements[1].query")),
        ),
        (
            "a reader's statements that write",
            ExecuteSpec {
                scope: Scope::Cloud("aws".to_owned()),
                ..statements_on_app(&["SELECT $1::int", "UPDATE accounts SET balance = $1"])
            },
            user(Role::Reader),
            Some(Refused::PermissionDenied),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, spec, identity, refusal) in &cases {
        let got = plan(spec, identity, &config, &registry).await;
        let got = match &got {
            Ok(_) => "planned".to_owned(),
            Err(error) => kind(error),
        };
        let want = refusal.as_ref().map_or_else(|| "planned".to_owned(), expected);
        if got != want {
            wrong.push(format!("{name}: expected {want}, got {got}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn a_plan_says_how_it_runs() {
    let config = fleet();
    let registry = Registry::new(&config);
    let master = user(Role::Master);

    let read = plan(&on_app("SELECT 1; SELECT 2"), &master, &config, &registry)
        .await
        .expect("planned");
    assert_eq!(read.targets.len(), 2, "both clouds' copies");
    assert!(read.transactional && !read.writes && !read.reader_login);
    assert!(read.statements.iter().all(|s| s.cursorable));
    assert_eq!(read.schema_for(&Target::new("aws", "app")), "public");

    let vacuum = plan(&on_app("VACUUM"), &master, &config, &registry)
        .await
        .expect("planned");
    assert!(!vacuum.transactional, "VACUUM runs outside a transaction block");

    let reader = plan(
        &ExecuteSpec {
            scope: Scope::Cloud("aws".to_owned()),
            pg_schema: "sales".to_owned(),
            ..on_app("SELECT 1")
        },
        &user(Role::Reader),
        &config,
        &registry,
    )
    .await
    .expect("planned");
    assert!(reader.read_only && reader.reader_login);
    assert_eq!(reader.schema_for(&Target::new("aws", "app")), "sales");

    let secret = plan(
        &ExecuteSpec {
            confirm_dangerous: true,
            ..on_app("ALTER ROLE bob PASSWORD 'hunter2'")
        },
        &master,
        &config,
        &registry,
    )
    .await
    .expect("planned");
    let redacted = secret
        .redacted_query
        .expect("a text that may carry a password is redacted");
    assert!(!redacted.contains("hunter2"), "{redacted}");
}

#[tokio::test]
async fn statements_keep_their_own_parameters_and_positions() {
    let config = fleet();
    let registry = Registry::new(&config);
    let master = user(Role::Master);

    let transfer = plan(
        &statements_on_app(&[
            "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
            "-- the other side\nUPDATE accounts\n   SET balance = balance + $1 WHERE id = 2;",
        ]),
        &master,
        &config,
        &registry,
    )
    .await
    .expect("planned");
    assert_eq!(transfer.statements.len(), 2);
    assert!(transfer.writes && transfer.transactional);
    for (index, statement) in transfer.statements.iter().enumerate() {
        assert_eq!(statement.params_field, format!("statements[{index}].params"));
        assert!(
            matches!(statement.params.as_slice(), [Param { value: ParamValue::Int(n), .. }] if *n == i64::try_from(index).unwrap_or_default()),
            "{:?}",
            statement.params
        );
    }

    // An error is placed in its own entry, at the entry's own line and column.
    let error = plan(
        &statements_on_app(&["SELECT $1::int", "SELECT 1,\n  FROM accounts"]),
        &master,
        &config,
        &registry,
    )
    .await
    .expect_err("a syntax error");
    let RequestError::InvalidArgument { field, message } = &error else {
        panic!("expected INVALID_ARGUMENT, got {error:?}");
    };
    assert_eq!(field, "statements[1].query");
    assert!(message.ends_with("(line 2, column 3)"), "{message}");

    // A write to a read_only copy says which one and that nothing ran.
    let frozen = plan(
        &on_app("INSERT INTO events VALUES (1)").with_database("analytics"),
        &master,
        &config,
        &registry,
    )
    .await
    .expect_err("read_only copy");
    let RequestError::FailedPrecondition(message) = &frozen else {
        panic!("expected FAILED_PRECONDITION, got {frozen:?}");
    };
    assert!(
        message.contains("gcp/analytics") && message.contains("read_only"),
        "{message}"
    );

    // A single query keeps its top-level parameters.
    let single = plan(
        &ExecuteSpec {
            params: vec![Param {
                value: ParamValue::Int(7),
                type_name: None,
            }],
            ..on_app("SELECT $1::int")
        },
        &master,
        &config,
        &registry,
    )
    .await
    .expect("planned");
    let [statement] = single.statements.as_slice() else {
        panic!("one statement");
    };
    assert_eq!(statement.params_field, "params");
    assert_eq!(statement.params.len(), 1);
}

trait WithDatabase {
    fn with_database(self, database: &str) -> Self;
}

impl WithDatabase for ExecuteSpec {
    fn with_database(self, database: &str) -> Self {
        ExecuteSpec {
            database: database.to_owned(),
            ..self
        }
    }
}
