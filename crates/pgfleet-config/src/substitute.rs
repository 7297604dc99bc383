//! `${VAR}` and `${VAR:-default}` in any string of the config tree.
//!
//! Done on the parsed tree, not the raw text, so a missing variable is
//! reported with the config path that used it and a value can never break
//! the file's syntax (a password holding `"` stays a password).

use serde_json::Value;

use crate::error::ConfigError;
use crate::path::ConfigPath;

/// Where variable values come from (the process environment, or a map in tests).
pub trait VariableSource {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl VariableSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> VariableSource for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Replaces every variable reference in every string of `tree`.
pub fn substitute_tree(tree: &mut Value, vars: &dyn VariableSource) -> Result<(), ConfigError> {
    walk(tree, &mut ConfigPath::root(), vars)
}

fn walk(node: &mut Value, path: &mut ConfigPath, vars: &dyn VariableSource) -> Result<(), ConfigError> {
    match node {
        Value::String(text) => {
            if text.contains("${") || text.contains("$${") {
                *text = substitute_str(text, &path.to_string(), vars)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push_index(index);
                walk(item, path, vars)?;
                path.pop();
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                path.push_key(key);
                walk(item, path, vars)?;
                path.pop();
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Substitutes one string; `$${` escapes a literal `${`.
pub fn substitute_str(text: &str, at: &str, vars: &dyn VariableSource) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body_and_tail) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body_and_tail.find('}') else {
            return Err(ConfigError::MalformedVariable {
                at: at.to_owned(),
                message: "`${` without a closing `}`".to_owned(),
            });
        };
        let body = &body_and_tail[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::MalformedVariable {
                at: at.to_owned(),
                message: format!("`${{{body}}}` is not a variable name"),
            });
        }
        // `:-` means "unset or empty", as in the shell.
        let value = vars
            .get(name)
            .filter(|value| !(value.is_empty() && default.is_some()));
        match (value, default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::MissingVariable {
                    variable: name.to_owned(),
                    at: at.to_owned(),
                });
            }
        }
        rest = &body_and_tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn vars() -> HashMap<String, String> {
        HashMap::from([
            ("HOST".to_owned(), "db.internal".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ])
    }

    #[test]
    fn substitutes_plain_default_and_escape() {
        let cases = [
            ("plain", "${HOST}", "db.internal"),
            ("embedded", "pg://${HOST}:5432", "pg://db.internal:5432"),
            ("default unused", "${HOST:-x}", "db.internal"),
            ("default used", "${NOPE:-fallback}", "fallback"),
            ("empty default", "${NOPE:-}", ""),
            ("empty value takes default", "${EMPTY:-d}", "d"),
            ("empty value without default", "${EMPTY}", ""),
            ("escape", "$${HOST}", "${HOST}"),
            ("lone dollar", "pa$$word$", "pa$$word$"),
            ("two", "${HOST}/${NOPE:-db}", "db.internal/db"),
        ];
        for (name, input, expected) in cases {
            let got = substitute_str(input, "x", &vars()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, expected, "case {name}");
        }
    }

    #[test]
    fn missing_variable_names_it_and_the_path() {
        let mut tree = json!({"clouds": [{"databases": [{"password": "${DB_PASSWORD}"}]}]});
        let err = substitute_tree(&mut tree, &vars()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("DB_PASSWORD"), "{text}");
        assert!(text.contains("clouds[0].databases[0].password"), "{text}");
    }

    #[test]
    fn malformed_references_are_errors() {
        for input in ["${HOST", "${}", "${A-B}"] {
            assert!(
                matches!(
                    substitute_str(input, "k", &vars()),
                    Err(ConfigError::MalformedVariable { .. })
                ),
                "{input}"
            );
        }
    }
}
