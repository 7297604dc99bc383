//! Fuzzing configuration loading: TOML, JSON and legacy `databases.json`
//! trees built from the real keys with random values (wrong types, numbers
//! out of range, unknown keys), `${VAR}`, `${VAR:-default}` and `$${` in
//! strings, and random `PGFLEET__…` overrides. Loading never panics; every
//! error says where (a path, a variable); a secret given as a password never
//! shows in an error or in `render_redacted`.
//! Budget: `pgfleet_testkit::fuzz` (`PGFLEET_FUZZ_CASES`, `PGFLEET_FUZZ_SECONDS`).

use std::collections::HashMap;
use std::path::Path;

use pgfleet_config::{ConfigError, FileFormat, Inputs, load_str, render_redacted};
use pgfleet_testkit::fuzz;
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;
use serde_json::{Map, Value, json};

/// Names of the variables random strings refer to: `EMPTY` is empty, `UNSET`
/// is never set. `SECRET` (16 digits, which no other generated value can
/// contain by chance) is only referred to where a secret belongs: a value put
/// at a wrong key is the user's to see again in the error.
const VARIABLES: &[&str] = &["HOST", "PORT", "EMPTY", "UNSET"];

/// A string value: plain text, variable references, escapes, or broken ones.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 ._:/@-]{0,8}",
        prop::sample::select(VARIABLES).prop_map(|v| format!("${{{v}}}")),
        (prop::sample::select(VARIABLES), "[a-z0-9]{0,4}").prop_map(|(v, d)| format!("${{{v}:-{d}}}")),
        Just("$${HOST}".to_owned()),
        Just("${".to_owned()),
        Just("${}".to_owned()),
        Just("${HOST".to_owned()),
        Just("$".to_owned()),
        Just("}".to_owned()),
        Just("é\u{1f418}".to_owned()),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|p| p.concat())
}

/// Any JSON value, nested a little.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(-1), Just(65_536), Just(u32::MAX as i64 + 1)].prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
        prop::sample::select(&["1s", "0s", "-5s", "10 years", "2m", "1ms"][..]).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a key: mostly the first (valid) of `plausible`, sometimes
/// another (often out of range), rarely anything at all, so that some
/// configurations load and the rest fail in one or two places.
fn value(chaos: bool, plausible: Vec<Value>) -> BoxedStrategy<Value> {
    let valid = plausible.first().cloned().unwrap_or(Value::Null);
    if !chaos {
        return Just(valid).boxed();
    }
    prop_oneof![
        40 => Just(valid),
        4 => prop::sample::select(plausible),
        1 => any_value(),
    ]
    .boxed()
}

/// An object of `fields`; with `chaos`, some are left out and an unknown key
/// may be added.
fn object(chaos: bool, fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let entries: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .into_iter()
        .map(|(key, strategy)| {
            let entry = strategy.prop_map(move |v| (key.to_owned(), v));
            if chaos {
                prop::option::weighted(0.95, entry).boxed()
            } else {
                entry.prop_map(Some).boxed()
            }
        })
        .collect();
    let unknown = if chaos {
        prop::option::weighted(0.05, ("[a-z_]{1,8}", any_value())).boxed()
    } else {
        Just(None).boxed()
    };
    (entries, unknown)
        .prop_map(|(entries, unknown)| {
            let mut map: Map<String, Value> = entries.into_iter().flatten().collect();
            if let Some((k, v)) = unknown {
                map.insert(k, v);
            }
            Value::Object(map)
        })
        .boxed()
}

fn list(chaos: bool, item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    let min = usize::from(!chaos);
    prop::collection::vec(item, min..max)
        .prop_map(Value::Array)
        .boxed()
}

fn duration(chaos: bool) -> BoxedStrategy<Value> {
    value(
        chaos,
        vec![json!("5s"), json!("250ms"), json!("0s"), json!("${PORT}s")],
    )
}

fn port(chaos: bool) -> BoxedStrategy<Value> {
    value(
        chaos,
        vec![
            json!(5432),
            json!("${PORT}"),
            json!("${PORT:-5432}"),
            json!(0),
            json!(70_000),
        ],
    )
}

fn host(chaos: bool) -> BoxedStrategy<Value> {
    value(
        chaos,
        vec![
            json!("127.0.0.1"),
            json!("${HOST}"),
            json!("${HOST:-db.internal}"),
            json!(""),
        ],
    )
}

/// Names are random so that siblings rarely clash (a clash is an error).
fn name(chaos: bool) -> BoxedStrategy<Value> {
    let unique = "[a-z][a-z0-9_]{5}".prop_map(Value::String);
    if !chaos {
        return unique.boxed();
    }
    prop_oneof![
        8 => unique,
        1 => value(chaos, vec![json!("aws"), json!("Bad Name!"), json!("")]),
    ]
    .boxed()
}

/// Where the secret goes: itself (as text, or as a number: a wrong type for
/// a password that an error must not echo), or through the variable that
/// holds it.
fn password(chaos: bool, secret: &str) -> BoxedStrategy<Value> {
    let number: Value = secret.parse::<u64>().map_or(Value::Null, Value::from);
    // The first is long enough for an audit chain key (32 bytes).
    let plain = prop::sample::select(vec![
        json!(format!("pw-{secret}-{secret}")),
        json!(secret),
        json!("${SECRET}"),
    ]);
    let odd = prop::sample::select(vec![number, json!([secret]), json!("${UNSET:-x}")]);
    if chaos {
        prop_oneof![8 => plain, 1 => odd].boxed()
    } else {
        plain.boxed()
    }
}

fn pool(chaos: bool) -> BoxedStrategy<Value> {
    object(
        chaos,
        vec![
            (
                "max_connections",
                value(chaos, vec![json!(4), json!(0), json!(-1), json!(1_000_000)]),
            ),
            ("min_connections", value(chaos, vec![json!(1), json!(10)])),
            ("acquire_timeout", duration(chaos)),
        ],
    )
}

fn database(chaos: bool, secret: &str) -> BoxedStrategy<Value> {
    object(
        chaos,
        vec![
            ("name", name(chaos)),
            ("host", host(chaos)),
            ("port", port(chaos)),
            ("user", value(chaos, vec![json!("app")])),
            ("password", password(chaos, secret)),
            ("reader_user", value(chaos, vec![json!("reader")])),
            ("reader_password", password(chaos, secret)),
            ("database", value(chaos, vec![json!("app")])),
            (
                "sslmode",
                value(
                    chaos,
                    vec![json!("require"), json!("disable"), json!("sometimes")],
                ),
            ),
            (
                "schemas",
                value(chaos, vec![json!(["public"]), json!([]), json!("public")]),
            ),
            (
                "default_schema",
                value(chaos, vec![json!("public"), json!("absent")]),
            ),
            (
                "read_preference",
                value(chaos, vec![json!("primary"), json!("replica"), json!("nearest")]),
            ),
            ("max_replica_lag", duration(chaos)),
            ("pool", pool(chaos)),
            (
                "replicas",
                list(
                    chaos,
                    object(
                        chaos,
                        vec![
                            ("host", host(chaos)),
                            ("port", port(chaos)),
                            ("password", password(chaos, secret)),
                        ],
                    ),
                    2,
                ),
            ),
        ],
    )
}

fn native(chaos: bool, secret: &str) -> BoxedStrategy<Value> {
    object(
        chaos,
        vec![
            (
                "server",
                object(
                    chaos,
                    vec![
                        (
                            "listen_addr",
                            value(
                                chaos,
                                vec![json!("127.0.0.1:0"), json!("nowhere"), json!("${HOST}:1")],
                            ),
                        ),
                        ("shutdown_grace", duration(chaos)),
                        ("grpc_web", value(chaos, vec![json!(true)])),
                        (
                            "max_message_bytes",
                            value(chaos, vec![json!(4_194_304), json!(0), json!(u64::MAX)]),
                        ),
                        (
                            "cors",
                            object(
                                chaos,
                                vec![(
                                    "allowed_origins",
                                    value(chaos, vec![json!(["*"]), json!(["http://a"])]),
                                )],
                            ),
                        ),
                        (
                            "trusted_proxies",
                            value(chaos, vec![json!(["10.0.0.0/8"]), json!(["nonsense"])]),
                        ),
                    ],
                ),
            ),
            (
                "clouds",
                list(
                    chaos,
                    object(
                        chaos,
                        vec![
                            ("name", name(chaos)),
                            ("databases", list(chaos, database(chaos, secret), 3)),
                        ],
                    ),
                    3,
                ),
            ),
            (
                "history",
                object(
                    chaos,
                    vec![
                        ("host", host(chaos)),
                        ("port", port(chaos)),
                        ("user", value(chaos, vec![json!("pgfleet")])),
                        ("password", password(chaos, secret)),
                        ("database", value(chaos, vec![json!("pgfleet")])),
                        ("pool", pool(chaos)),
                    ],
                ),
            ),
            (
                "redis",
                object(
                    chaos,
                    vec![(
                        "url",
                        prop::sample::select(vec![
                            json!(format!("redis://:pw{secret}@127.0.0.1:6379")),
                            json!("redis://:${SECRET}@${HOST}"),
                        ])
                        .boxed(),
                    )],
                ),
            ),
            (
                "query",
                object(
                    chaos,
                    vec![
                        ("default_timeout", duration(chaos)),
                        ("max_timeout", duration(chaos)),
                        ("max_rows_per_statement", value(chaos, vec![json!(500), json!(0)])),
                    ],
                ),
            ),
            (
                "audit",
                object(
                    chaos,
                    vec![("chain", object(chaos, vec![("key", password(chaos, secret))]))],
                ),
            ),
            ("health", object(chaos, vec![("interval", duration(chaos))])),
        ],
    )
}

/// The Node.js manager's `databases.json`.
fn legacy(chaos: bool, secret: &str) -> BoxedStrategy<Value> {
    let db = object(
        chaos,
        vec![
            ("name", name(chaos)),
            ("host", host(chaos)),
            ("port", port(chaos)),
            ("user", value(chaos, vec![json!("app")])),
            ("password", password(chaos, secret)),
            ("database", value(chaos, vec![json!("app")])),
            (
                "ssl",
                value(chaos, vec![json!(true), json!({"rejectUnauthorized": false})]),
            ),
            ("max", value(chaos, vec![json!(5)])),
            (
                "idleTimeoutMillis",
                value(chaos, vec![json!(1000), json!(-1), json!("soon")]),
            ),
            ("connectionTimeoutMillis", value(chaos, vec![json!(3000)])),
            ("defaultSchema", value(chaos, vec![json!("public")])),
        ],
    );
    let cloud = object(
        chaos,
        vec![("cloudName", name(chaos)), ("db_configs", list(chaos, db, 3))],
    );
    object(
        chaos,
        vec![
            ("primary", cloud.clone()),
            (
                "secondary",
                prop_oneof![list(chaos, cloud.clone(), 3), cloud].boxed(),
            ),
            (
                "history",
                object(
                    chaos,
                    vec![
                        ("host", host(chaos)),
                        ("port", port(chaos)),
                        ("user", value(chaos, vec![json!("pgfleet")])),
                        ("password", password(chaos, secret)),
                        ("database", value(chaos, vec![json!("pgfleet")])),
                    ],
                ),
            ),
        ],
    )
}

/// `PGFLEET__…` overrides of real and made-up paths; the secret only ever
/// goes to a password.
fn overrides(chaos: bool, secret: &str) -> BoxedStrategy<Vec<(String, String)>> {
    if !chaos {
        return Just(Vec::new()).boxed();
    }
    let path = prop::collection::vec(
        prop::sample::select(
            &[
                "HISTORY",
                "PASSWORD",
                "CLOUDS",
                "0",
                "DATABASES",
                "PORT",
                "QUERY",
                "X",
            ][..],
        ),
        1..4,
    )
    .prop_map(|parts| format!("PGFLEET__{}", parts.join("__")));
    let password = prop::sample::select(vec![
        "PGFLEET__HISTORY__PASSWORD".to_owned(),
        "PGFLEET__CLOUDS__0__DATABASES__0__PASSWORD".to_owned(),
    ]);
    let entry = prop_oneof![(path, text()), (password, Just(secret.to_owned())),];
    prop::collection::vec(entry, 0..3).boxed()
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Toml,
    Json,
    Legacy,
}

#[derive(Debug)]
struct Case {
    secret: String,
    shape: Shape,
    text: String,
    variables: HashMap<String, String>,
    overrides: Vec<(String, String)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        "[1-9][0-9]{15}",
        prop_oneof![Just(Shape::Toml), Just(Shape::Json), Just(Shape::Legacy)],
        // A quarter of the cases are well-formed trees, so that loading
        // succeeds and `render_redacted` is checked too.
        prop::bool::weighted(0.75),
    )
        .prop_flat_map(|(secret, shape, chaos)| {
            let tree = match shape {
                Shape::Legacy => legacy(chaos, &secret),
                _ => native(chaos, &secret),
            };
            let variables = (host(chaos), port(chaos));
            (
                Just(secret.clone()),
                Just(shape),
                tree,
                variables,
                overrides(chaos, &secret),
            )
        })
        .prop_filter_map(
            "not representable in TOML",
            |(secret, shape, tree, (h, p), overrides)| {
                let text = match shape {
                    Shape::Toml => toml::to_string(&tree).ok()?,
                    _ => serde_json::to_string_pretty(&tree).ok()?,
                };
                let plain = |v: Value| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let variables = HashMap::from([
                    ("HOST".to_owned(), plain(h)),
                    ("PORT".to_owned(), plain(p)),
                    ("SECRET".to_owned(), secret.clone()),
                    ("EMPTY".to_owned(), String::new()),
                ]);
                Some(Case {
                    secret,
                    shape,
                    text,
                    variables,
                    overrides,
                })
            },
        )
}

fn check_load(case: Case) -> TestCaseResult {
    let format = match case.shape {
        Shape::Toml => FileFormat::Toml,
        Shape::Json | Shape::Legacy => FileFormat::Json,
    };
    let inputs = Inputs {
        variables: &case.variables,
        overrides: case.overrides.clone(),
    };
    match load_str(&case.text, format, Path::new("fuzz-config"), &inputs) {
        Ok(loaded) => {
            let rendered = render_redacted(&loaded.config);
            prop_assert!(
                !rendered.contains(&case.secret),
                "secret in render_redacted:\n{rendered}"
            );
        }
        Err(error) => {
            let shown = format!("{error}\n{error:?}");
            prop_assert!(!shown.contains(&case.secret), "secret in an error: {shown}");
            match &error {
                ConfigError::Syntax { path, .. } => prop_assert!(!path.as_os_str().is_empty()),
                ConfigError::MissingVariable { variable, at } => {
                    prop_assert!(!variable.is_empty() && !at.is_empty(), "{error}");
                }
                ConfigError::MalformedVariable { at, .. } => prop_assert!(!at.is_empty(), "{error}"),
                ConfigError::Override { variable, .. } => prop_assert!(!variable.is_empty(), "{error}"),
                ConfigError::Invalid(problems) => {
                    prop_assert!(!problems.is_empty());
                    for p in problems {
                        prop_assert!(!p.path.is_empty() && !p.message.is_empty(), "{error}");
                    }
                }
                // No file or env file is read here.
                ConfigError::Read { .. } | ConfigError::EnvFile { .. } => {
                    prop_assert!(false, "unexpected: {error}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_config_loading() {
    fuzz::run("config", file!(), 256, case(), check_load);
}
