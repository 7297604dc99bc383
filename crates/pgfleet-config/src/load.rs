//! The load pipeline: parse → legacy rewrite → env overrides → `${VAR}`
//! substitution → secrets from files → typed → validated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::FileFormat;
use serde_json::Value;

use crate::error::{ConfigError, Problem};
use crate::model::FleetConfig;
use crate::secret_files::resolve_secret_files;
use crate::substitute::{VariableSource, substitute_tree};
use crate::{env_file, legacy, overlay, validate};

/// Env var naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "PGFLEET_CONFIG";

/// A configuration that loaded and validated, with what was noticed on the way.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The typed, validated configuration.
    pub config: FleetConfig,
    /// The file it came from.
    pub path: PathBuf,
    /// True when the file was a legacy `databases.json`.
    pub legacy: bool,
    /// Things that did not stop loading but deserve a look (ignored legacy keys).
    pub warnings: Vec<String>,
}

/// Where a load reads its inputs; the process by default, fixed maps in tests.
pub struct Inputs<'a> {
    /// `${VAR}` values.
    pub variables: &'a dyn VariableSource,
    /// `PGFLEET__…` overrides (any other names are ignored).
    pub overrides: Vec<(String, String)>,
}

/// Loads `path` with the process environment (and the env file applied at
/// start, read again: [`crate::env_file`]).
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let environment = env_file::environment()?;
    let variables: HashMap<String, String> = environment.iter().cloned().collect();
    load_with(
        path,
        &Inputs {
            variables: &variables,
            overrides: environment,
        },
    )
}

/// Loads `path` with the given inputs.
pub fn load_with(path: &Path, inputs: &Inputs<'_>) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, format_of(path), path, inputs)
}

/// The file format a path's extension names; TOML when it names none.
pub fn format_of(path: &Path) -> FileFormat {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("json") => FileFormat::Json,
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => FileFormat::Toml,
    }
}

/// Loads configuration text; `path` is only used in messages.
pub fn load_str(
    text: &str,
    format: FileFormat,
    path: &Path,
    inputs: &Inputs<'_>,
) -> Result<LoadedConfig, ConfigError> {
    let syntax = |message: String| ConfigError::Syntax {
        path: path.to_owned(),
        message,
    };
    let mut tree: Value = config::Config::builder()
        .add_source(config::File::from_str(text, format))
        .build()
        .map_err(|e| syntax(e.to_string()))?
        .try_deserialize()
        .map_err(|e| syntax(e.to_string()))?;

    let legacy = legacy::is_legacy(&tree);
    let mut warnings = Vec::new();
    if legacy {
        let (converted, legacy_warnings) = legacy::convert(&tree);
        tree = converted;
        warnings = legacy_warnings;
    }

    overlay::apply_overrides(&mut tree, inputs.overrides.iter().cloned())?;
    substitute_tree(&mut tree, inputs.variables)?;
    resolve_secret_files(&mut tree)?;

    let config: FleetConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Invalid(vec![Problem {
            path: if path == "." { "(root)".to_owned() } else { path },
            message: e.into_inner().to_string(),
        }])
    })?;

    let problems = validate::validate(&config);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(LoadedConfig {
        config,
        path: path.to_owned(),
        legacy,
        warnings,
    })
}

/// The resolved configuration as TOML, every secret redacted.
pub fn render_redacted(config: &FleetConfig) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}
