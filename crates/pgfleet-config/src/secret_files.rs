//! `password_file`, `reader_password_file` (anywhere) and `redis.url_file`:
//! a secret read from a file, as Kubernetes and Docker mount them.
//!
//! Done on the parsed tree, after substitution and before typing, so the
//! typed model keeps one field per secret and every load (a start, a SIGHUP
//! reload) reads the files afresh: a rotated secret is picked up without a
//! restart. Trailing line breaks are removed (editors and `echo` add one);
//! other whitespace is kept, since it may be part of a password.

use std::path::Path;

use serde_json::Value;

use crate::error::{ConfigError, Problem};
use crate::path::ConfigPath;

/// Secret fields that may instead be given as `<field>_file`, anywhere in
/// the tree.
const ANYWHERE: [&str; 2] = ["password", "reader_password"];

/// Secret fields that may be given as files only in one section (`url` is
/// not a secret elsewhere).
const IN_SECTION: [(&str, &str); 1] = [("redis", "url")];

/// Replaces every `<field>_file` with `<field>` holding the file's content.
/// All problems are collected, each with its path; a file's content never
/// appears in one.
pub fn resolve_secret_files(tree: &mut Value) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    walk(tree, &mut ConfigPath::root(), None, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn walk(node: &mut Value, path: &mut ConfigPath, section: Option<&str>, problems: &mut Vec<Problem>) {
    match node {
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push_index(index);
                walk(item, path, section, problems);
                path.pop();
            }
        }
        Value::Object(map) => {
            let fields = ANYWHERE.iter().copied().chain(
                IN_SECTION
                    .iter()
                    .filter(|(name, _)| Some(*name) == section)
                    .map(|(_, field)| *field),
            );
            for field in fields {
                let file_key = format!("{field}_file");
                let Some(file) = map.remove(&file_key) else {
                    continue;
                };
                let at = path.key(&file_key);
                if map.contains_key(field) {
                    problems.push(problem(
                        &at,
                        format!("set together with {field}: give one of them"),
                    ));
                    continue;
                }
                let Value::String(file) = file else {
                    problems.push(problem(&at, "must be a file path".to_owned()));
                    continue;
                };
                match read_secret(Path::new(&file)) {
                    Ok(secret) => {
                        map.insert(field.to_owned(), Value::String(secret));
                    }
                    Err(message) => problems.push(problem(&at, message)),
                }
            }
            for (key, item) in map.iter_mut() {
                path.push_key(key);
                walk(item, path, Some(key.as_str()), problems);
                path.pop();
            }
        }
        _ => {}
    }
}

fn problem(at: &ConfigPath, message: String) -> Problem {
    Problem {
        path: at.to_string(),
        message,
    }
}

/// The file's text without trailing line breaks. Errors name the file and
/// the reason, never its content.
fn read_secret(file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("{} does not hold UTF-8 text", file.display()))?;
    let kept = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(kept);
    if text.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn write(dir: &Path, name: &str, content: &str) -> String {
        let file = dir.join(name);
        std::fs::write(&file, content).expect("write secret file");
        file.display().to_string()
    }

    #[test]
    fn files_become_fields_and_keep_inner_whitespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = write(dir.path(), "pw", " pass word \n");
        let reader = write(dir.path(), "reader", "r\r\n");
        let url = write(dir.path(), "url", "redis://:s3cret@127.0.0.1:6379\n");
        let mut tree = json!({
            "clouds": [{"databases": [{"password_file": password, "reader_password_file": reader}]}],
            "redis": {"url_file": url},
        });
        resolve_secret_files(&mut tree).expect("resolves");
        assert_eq!(
            tree,
            json!({
                "clouds": [{"databases": [{"password": " pass word ", "reader_password": "r"}]}],
                "redis": {"url": "redis://:s3cret@127.0.0.1:6379"},
            })
        );
    }

    #[test]
    fn problems_carry_paths_and_never_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = write(dir.path(), "pw", "hunter2\n");
        let empty = write(dir.path(), "empty", "\n");
        let mut tree = json!({
            "history_store": {"password": "x", "password_file": password},
            "clouds": [{"databases": [
                {"password_file": dir.path().join("missing").display().to_string()},
                {"password_file": empty},
            ]}],
            "server": {"url_file": "ignored outside redis"},
        });
        let Err(ConfigError::Invalid(problems)) = resolve_secret_files(&mut tree) else {
            panic!("expected problems");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        let has = |start: &str, end: &str| text.iter().any(|t| t.starts_with(start) && t.contains(end));
        assert!(
            has("history_store.password_file:", "set together with password"),
            "{text:?}"
        );
        assert!(
            has("clouds[0].databases[0].password_file:", "cannot read"),
            "{text:?}"
        );
        assert!(
            has("clouds[0].databases[1].password_file:", "is empty"),
            "{text:?}"
        );
        assert!(!text.concat().contains("hunter2"));
        assert_eq!(
            tree["server"]["url_file"], "ignored outside redis",
            "left for typing to reject"
        );
    }
}
