//! A `.env` file (`dotenvy`): variables for a process started without them,
//! as the Node.js service this replaces read them.
//!
//! [`apply_at_start`] runs first thing in `main`, before any thread exists:
//! it sets every variable of the file that the real environment does not
//! already set (the real environment wins, as with every dotenv loader), so
//! the command line's `env` defaults, the log filter and `${VAR}` in the
//! configuration all see them. It remembers which names the real
//! environment had, so that each later load ([`environment`], e.g. on
//! SIGHUP) reads the file again: a variable edited in `.env` is picked up by
//! a reload like an edited configuration file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::ConfigError;

/// Names the env file to read; without it, `.env` in the working directory
/// is read when it exists.
pub const ENV_FILE_ENV: &str = "PGFLEET_ENV_FILE";

/// The env file applied at start, and the names the real environment had then.
struct Applied {
    file: PathBuf,
    real_names: HashSet<String>,
}

static APPLIED: OnceLock<Applied> = OnceLock::new();

/// Applies the env file (`$PGFLEET_ENV_FILE`, else `./.env` when present)
/// to the process environment without overriding what is set. Returns the
/// file applied, if any. A file that does not parse changes nothing.
///
/// Call once, before any thread starts (it sets environment variables).
pub fn apply_at_start() -> Result<Option<PathBuf>, ConfigError> {
    let file = match std::env::var_os(ENV_FILE_ENV) {
        Some(named) => PathBuf::from(named),
        None if Path::new(".env").is_file() => PathBuf::from(".env"),
        None => return Ok(None),
    };
    // Parsed whole before anything is set, so a bad line sets nothing.
    read(&file)?;
    let real_names = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    dotenvy::from_path(&file).map_err(|error| env_file_error(&file, error))?;
    let _ = APPLIED.set(Applied {
        file: file.clone(),
        real_names,
    });
    Ok(Some(file))
}

/// The environment a configuration load sees: the process environment, with
/// the values of the env file applied at start read again from the file
/// (a variable removed from the file is unset; the real environment still
/// wins).
pub fn environment() -> Result<Vec<(String, String)>, ConfigError> {
    let Some(applied) = APPLIED.get() else {
        return Ok(std::env::vars().collect());
    };
    let mut variables: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| applied.real_names.contains(name))
        .collect();
    variables.extend(
        read(&applied.file)?
            .into_iter()
            .filter(|(name, _)| !applied.real_names.contains(name)),
    );
    Ok(variables)
}

/// Every variable of `file`, in order.
fn read(file: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    dotenvy::from_path_iter(file)
        .and_then(|lines| lines.collect::<Result<Vec<_>, _>>())
        .map_err(|error| env_file_error(file, error))
}

/// dotenvy's message for a bad line quotes the line, which may hold a
/// secret: only where it failed is kept.
fn env_file_error(file: &Path, error: dotenvy::Error) -> ConfigError {
    let message = match error {
        dotenvy::Error::LineParse(_, at) => format!("a line does not parse (at character {at})"),
        dotenvy::Error::Io(error) => error.to_string(),
        dotenvy::Error::EnvVar(error) => error.to_string(),
        _ => "cannot be read".to_owned(),
    };
    ConfigError::EnvFile {
        path: file.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_reported_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(".env");
        std::fs::write(&file, "GOOD=1\nPASSWORD='hunter2\n").expect("write");
        let error = read(&file).expect_err("unterminated quote");
        let text = error.to_string();
        assert!(text.contains(".env") && text.contains("does not parse"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn reads_every_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(".env");
        std::fs::write(&file, "# comment\nA=1\nexport B=\"two words\"\n").expect("write");
        assert_eq!(
            read(&file).expect("parses"),
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two words".to_owned())
            ]
        );
    }
}
