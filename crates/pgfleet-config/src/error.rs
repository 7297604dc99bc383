//! What can go wrong while loading a configuration.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Config path, e.g. `clouds[1].databases[0].port`.
    pub path: String,
    /// What is wrong, e.g. `must be 1-65535`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML/YAML/JSON.
    #[error("cannot parse config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// `${VAR}` names a variable that is not set and has no default.
    #[error(
        "environment variable {variable} is not set (used at {at}); set it or write ${{{variable}:-default}}"
    )]
    MissingVariable { variable: String, at: String },
    /// A `${` without its closing brace, or an empty name.
    #[error("malformed variable reference at {at}: {message}")]
    MalformedVariable { at: String, message: String },
    /// A `PGFLEET__…` override names a path the config cannot hold.
    #[error("environment override {variable}: {message}")]
    Override { variable: String, message: String },
    /// The env file (`.env`, `PGFLEET_ENV_FILE`) cannot be read or parsed.
    #[error("env file {path}: {message}")]
    EnvFile { path: PathBuf, message: String },
    /// Every problem found, each with its path.
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The problems a validation found; empty for other errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}
