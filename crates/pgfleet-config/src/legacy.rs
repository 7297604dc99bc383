//! The Node.js "Dual Database Manager" `databases.json`, read unchanged.
//!
//! Shape: `primary {cloudName, db_configs[]}`, `secondary [{cloudName,
//! db_configs[]}]`, `history {host, port, user, password, database}`. It is
//! rewritten into pgfleet's own tree before overrides, substitution and
//! validation, so both shapes get exactly the same checks.

use serde_json::{Map, Value, json};

use crate::path::ConfigPath;

/// True when `tree` is a legacy `databases.json`.
pub fn is_legacy(tree: &Value) -> bool {
    tree.get("clouds").is_none() && (tree.get("primary").is_some() || tree.get("secondary").is_some())
}

/// Rewrites a legacy tree into pgfleet's shape; returns warnings for keys it
/// does not understand (dropped) so nothing is ignored silently.
pub fn convert(tree: &Value) -> (Value, Vec<String>) {
    let mut warnings = Vec::new();
    let mut clouds = Vec::new();
    let root = ConfigPath::root();
    if let Some(primary) = tree.get("primary") {
        clouds.push(convert_cloud(primary, &root.key("primary"), &mut warnings));
    }
    match tree.get("secondary") {
        Some(Value::Array(secondaries)) => {
            for (index, cloud) in secondaries.iter().enumerate() {
                clouds.push(convert_cloud(
                    cloud,
                    &root.key("secondary").index(index),
                    &mut warnings,
                ));
            }
        }
        Some(other) if !other.is_null() => {
            // Some deployments wrote a single object instead of a list.
            clouds.push(convert_cloud(other, &root.key("secondary"), &mut warnings));
        }
        _ => {}
    }
    let mut out = Map::new();
    out.insert("clouds".to_owned(), Value::Array(clouds));
    if let Some(history) = tree.get("history") {
        out.insert(
            "history".to_owned(),
            convert_connection(history, &root.key("history"), &mut warnings),
        );
    }
    if let Value::Object(map) = tree {
        for (key, value) in map {
            match key.as_str() {
                "primary" | "secondary" | "history" => {}
                // pgfleet sections may sit beside the legacy ones.
                "server" | "redis" | "query" | "health" | "retry" | "log" | "telemetry" => {
                    out.insert(key.clone(), value.clone());
                }
                _ => warnings.push(format!("{key}: not a databases.json key; ignored")),
            }
        }
    }
    (Value::Object(out), warnings)
}

fn convert_cloud(cloud: &Value, path: &ConfigPath, warnings: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    if let Some(name) = cloud.get("cloudName").or_else(|| cloud.get("name")) {
        out.insert("name".to_owned(), name.clone());
    }
    if let Some(label) = cloud.get("label") {
        out.insert("label".to_owned(), label.clone());
    }
    let databases = match cloud.get("db_configs") {
        Some(Value::Array(configs)) => configs
            .iter()
            .enumerate()
            .map(|(index, db)| convert_connection(db, &path.key("db_configs").index(index), warnings))
            .collect(),
        _ => Vec::new(),
    };
    out.insert("databases".to_owned(), Value::Array(databases));
    if let Value::Object(map) = cloud {
        for key in map.keys() {
            if !matches!(key.as_str(), "cloudName" | "name" | "label" | "db_configs") {
                warnings.push(format!("{}: not a databases.json key; ignored", path.key(key)));
            }
        }
    }
    Value::Object(out)
}

/// Converts one `db_configs` entry or the `history` section.
fn convert_connection(db: &Value, path: &ConfigPath, warnings: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    let mut pool = Map::new();
    let Value::Object(map) = db else {
        // Leave it for validation to report with the right path.
        return db.clone();
    };
    for (key, value) in map {
        match key.as_str() {
            "name" | "label" | "host" | "port" | "user" | "password" | "database" | "schemas" => {
                out.insert(key.clone(), value.clone());
            }
            "defaultSchema" | "default_schema" => {
                out.insert("default_schema".to_owned(), value.clone());
            }
            // node-postgres: `ssl: true` or `ssl: {rejectUnauthorized: false}`.
            "ssl" => {
                let mode = match value {
                    Value::Bool(false) | Value::Null => "disable",
                    Value::Object(options)
                        if options.get("rejectUnauthorized") == Some(&Value::Bool(false)) =>
                    {
                        "require"
                    }
                    Value::Object(_) => "verify-full",
                    _ => "require",
                };
                out.insert("sslmode".to_owned(), json!(mode));
            }
            // node-postgres pool options.
            "max" => {
                pool.insert("max_connections".to_owned(), value.clone());
            }
            "min" => {
                pool.insert("min_connections".to_owned(), value.clone());
            }
            "idleTimeoutMillis" => {
                pool.insert("idle_timeout".to_owned(), millis(value));
            }
            "connectionTimeoutMillis" => {
                pool.insert("acquire_timeout".to_owned(), millis(value));
            }
            _ => warnings.push(format!("{}: not a databases.json key; ignored", path.key(key))),
        }
    }
    if !pool.is_empty() {
        out.insert("pool".to_owned(), Value::Object(pool));
    }
    Value::Object(out)
}

fn millis(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(format!("{n}ms")),
        Value::String(s) if s.chars().all(|c| c.is_ascii_digit()) => json!(format!("{s}ms")),
        other => other.clone(),
    }
}
