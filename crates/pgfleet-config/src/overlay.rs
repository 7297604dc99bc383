//! `PGFLEET__SECTION__KEY=value` environment overrides.
//!
//! Segments are separated by `__` and matched case-insensitively. In a list,
//! a segment is either an index or the `name` of an element, so
//! `PGFLEET__CLOUDS__AWS__DATABASES__DB1__PASSWORD` and
//! `PGFLEET__CLOUDS__0__DATABASES__0__PASSWORD` reach the same key.

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// Prefix of every override variable.
pub const PREFIX: &str = "PGFLEET__";

/// Applies every `PGFLEET__…` variable in `vars` to `tree`, in name order so
/// the result does not depend on the environment's iteration order.
pub fn apply_overrides(
    tree: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    overrides.sort();
    for (variable, value) in overrides {
        let segments: Vec<String> = variable[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Override {
                variable,
                message: "empty path segment".to_owned(),
            });
        }
        set_path(tree, &segments, &value).map_err(|message| ConfigError::Override { variable, message })?;
    }
    Ok(())
}

fn set_path(node: &mut Value, segments: &[String], raw: &str) -> Result<(), String> {
    let Some((segment, rest)) = segments.split_first() else {
        *node = parse_value(raw, node);
        return Ok(());
    };
    match node {
        Value::Array(items) => {
            let position = match segment.parse::<usize>() {
                Ok(index) if index < items.len() => index,
                Ok(index) => {
                    return Err(format!(
                        "index {index} is past the {} element(s) of the list",
                        items.len()
                    ));
                }
                Err(_) => items
                    .iter()
                    .position(|item| {
                        item.get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|name| name.eq_ignore_ascii_case(segment))
                    })
                    .ok_or_else(|| format!("no element named {segment:?} in the list"))?,
            };
            set_path(&mut items[position], rest, raw)
        }
        Value::Object(map) => {
            let key = map
                .keys()
                .find(|key| key.eq_ignore_ascii_case(segment))
                .cloned()
                .unwrap_or_else(|| segment.clone());
            let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
            set_path(child, rest, raw)
        }
        Value::Null => {
            *node = Value::Object(Map::new());
            set_path(node, segments, raw)
        }
        _ => Err(format!("{segment:?} is below a value that is not a section")),
    }
}

/// Environment values are strings; give them the shape the key expects.
fn parse_value(raw: &str, existing: &Value) -> Value {
    let trimmed = raw.trim();
    if (trimmed.starts_with('[') || trimmed.starts_with('{'))
        && let Ok(json) = serde_json::from_str::<Value>(trimmed)
    {
        return json;
    }
    match existing {
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(|item| Value::String(item.trim().to_owned()))
                .filter(|item| item.as_str() != Some(""))
                .collect(),
        ),
        _ => match trimmed {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_by_section_index_and_name() {
        let mut tree = json!({
            "server": {"listen_addr": "127.0.0.1:1"},
            "clouds": [{"name": "aws", "databases": [{"name": "db1", "port": 5432, "schemas": ["public"]}]}]
        });
        apply_overrides(
            &mut tree,
            env(&[
                ("PGFLEET__SERVER__LISTEN_ADDR", "0.0.0.0:50051"),
                ("PGFLEET__CLOUDS__AWS__DATABASES__DB1__PORT", "6543"),
                ("PGFLEET__CLOUDS__0__DATABASES__0__SCHEMAS", "public, app"),
                ("PGFLEET__REDIS__URL", "redis://x"),
                ("PGFLEET__SERVER__RUN_MIGRATIONS", "false"),
                ("PGFLEET_CONFIG", "ignored.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(tree["server"]["listen_addr"], "0.0.0.0:50051");
        assert_eq!(tree["server"]["run_migrations"], false);
        assert_eq!(tree["clouds"][0]["databases"][0]["port"], "6543");
        assert_eq!(
            tree["clouds"][0]["databases"][0]["schemas"],
            json!(["public", "app"])
        );
        assert_eq!(tree["redis"]["url"], "redis://x");
    }

    #[test]
    fn unknown_list_element_is_an_error() {
        let mut tree = json!({"clouds": [{"name": "aws"}]});
        let err = apply_overrides(&mut tree, env(&[("PGFLEET__CLOUDS__GCP__LABEL", "x")])).unwrap_err();
        assert!(err.to_string().contains("PGFLEET__CLOUDS__GCP__LABEL"), "{err}");
        assert!(err.to_string().contains("gcp"), "{err}");
    }
}
