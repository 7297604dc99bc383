//! The PostgreSQL client programs a backup runs (`pg_dump`, `pg_restore`,
//! `psql`): where they are, their major version, and a target's connection
//! handed over in their environment (`PGHOST`, `PGPASSWORD`...), never on a
//! command line, where any local user could read it.

use std::path::PathBuf;
use std::process::Stdio;

use pgfleet_config::DatabaseConfig;
use tokio::process::Command;

use crate::BackupError;

/// Where the client programs are.
#[derive(Debug, Clone, Default)]
pub struct PgTools {
    bin_dir: Option<PathBuf>,
}

/// A client program's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolVersion {
    pub major: u32,
    /// As the program prints it (`pg_dump (PostgreSQL) 15.20 ...`).
    pub text: String,
}

impl PgTools {
    pub fn new(bin_dir: Option<PathBuf>) -> Self {
        Self { bin_dir }
    }

    /// The path of program `name`.
    pub fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// `name --version`, parsed.
    pub async fn version(&self, name: &str) -> Result<ToolVersion, BackupError> {
        let output = Command::new(self.program(name))
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| {
                BackupError::FailedPrecondition(format!(
                    "cannot run {name} (install the PostgreSQL client or set backup.pg_bin_dir): {error}"
                ))
            })?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let major = parse_major(&text).ok_or_else(|| {
            BackupError::FailedPrecondition(format!("{name} --version printed {text:?}, not a version"))
        })?;
        Ok(ToolVersion { major, text })
    }

    /// A command for `name` connected to `connection` through its
    /// environment; every other `PG*` variable of pgfleet's own environment
    /// is removed so none can redirect it.
    pub fn command(&self, name: &str, connection: &ConnectionEnv) -> Command {
        let mut command = Command::new(self.program(name));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command
            .env("PGHOST", &connection.host)
            .env("PGPORT", connection.port.to_string())
            .env("PGUSER", &connection.user)
            .env("PGDATABASE", &connection.database)
            .env("PGSSLMODE", &connection.sslmode)
            .env("PGAPPNAME", "pgfleet-backup")
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true);
        if !connection.password.is_empty() {
            command.env("PGPASSWORD", connection.password.expose());
        }
        if let Some(root_cert) = &connection.ssl_root_cert {
            command.env("PGSSLROOTCERT", root_cert);
        }
        command
    }
}

/// The major version in `pg_dump (PostgreSQL) 15.20 (Debian ...)`, or in a
/// development version (`17devel`, `18beta1`).
pub fn parse_major(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A target's main connection, for a client program's environment.
#[derive(Debug, Clone)]
pub struct ConnectionEnv {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: pgfleet_config::Secret,
    pub database: String,
    pub sslmode: String,
    pub ssl_root_cert: Option<PathBuf>,
}

impl ConnectionEnv {
    pub fn of(config: &DatabaseConfig) -> Self {
        Self {
            host: config.host.clone(),
            port: config.port,
            user: config.user.clone(),
            password: config.password.clone(),
            database: config.database.clone(),
            sslmode: config.sslmode.as_str().to_owned(),
            ssl_root_cert: config.ssl_root_cert.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn majors() {
        let cases = [
            ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", Some(15)),
            ("pg_restore (PostgreSQL) 9.6.24", Some(9)),
            ("pg_dump (PostgreSQL) 18beta1", Some(18)),
            ("psql (PostgreSQL) 17devel", Some(17)),
            ("nothing here", None),
        ];
        for (text, major) in cases {
            assert_eq!(parse_major(text), major, "case {text:?}");
        }
    }
}
