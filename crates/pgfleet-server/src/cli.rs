//! The command line: `pgfleet serve | migrate | check-config | user | migrations | backup | import-legacy`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pgfleet_config::{CONFIG_ENV, LoadedConfig};

use crate::app::{self, RunningServer, ServeError};
use crate::auth::{AuthError, Authenticator, SessionStore, UserSpec};
use crate::telemetry::{self, LogFormat, Settings};
use pgfleet_engine::history_store;
use pgfleet_engine::identity::Role;

/// pgfleet: run SQL across a fleet of PostgreSQL databases, audited.
#[derive(Debug, Parser)]
#[command(name = "pgfleet", version, about)]
pub struct Cli {
    /// Configuration file (TOML, YAML, JSON or a legacy databases.json).
    #[arg(long, short, global = true, env = CONFIG_ENV, default_value = "pgfleet.toml")]
    pub config: PathBuf,
    /// Log line format; wins over `log.format` in the configuration
    /// (human when neither says).
    #[arg(long, global = true, env = "PGFLEET_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gRPC server.
    Serve,
    /// Apply pending history-store migrations and exit.
    Migrate,
    /// Load and validate the configuration, print it with secrets redacted,
    /// and exit non-zero on any problem.
    CheckConfig,
    /// Manage users without a running server (e.g. the first MASTER).
    #[command(subcommand)]
    User(UserCommand),
    /// Fleet schema migrations against the configuration, without a server:
    /// status, plan, apply (exit status 1 when behind, refused or failed).
    #[command(subcommand)]
    Migrations(crate::migrations_cli::MigrationsCommand),
    /// Backups against the configuration, without a server: run, list,
    /// verify, restore (exit status 1 when a target failed or was refused).
    #[command(subcommand)]
    Backup(crate::backup_cli::BackupCommand),
    /// Import the old Node.js Dual Database Manager's users (passwords keep
    /// working) and query history (as audit records) from its database.
    /// Idempotent; exit status 1 when a user or row was refused or in
    /// conflict (the rest is imported).
    ImportLegacy(crate::legacy_import_cli::ImportLegacyArgs),
}

/// `pgfleet user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from PGFLEET_PASSWORD, or asked
    /// for twice on the terminal; it is never taken from the command line,
    /// where other users could see it.
    Create {
        #[arg(long)]
        username: String,
        /// MASTER, USER or READER.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Defaults to `<username>@localhost`.
        #[arg(long)]
        email: Option<String>,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Succeed without changes when the username already exists
        /// (for provisioning scripts that run more than once).
        #[arg(long)]
        if_not_exists: bool,
    },
}

/// Environment variable holding the password for `pgfleet user create`.
pub const PASSWORD_ENV: &str = "PGFLEET_PASSWORD";

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(&text.to_ascii_uppercase()).ok_or_else(|| "expected MASTER, USER or READER".to_owned())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // First, while this is the only thread: the env file sets variables the
    // command line and the configuration read.
    if let Err(error) = pgfleet_config::env_file::apply_at_start() {
        eprintln!("pgfleet: {error}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig => {
            telemetry::init_stderr(cli.log_format);
            check_config(&cli)
        }
        Command::Serve
        | Command::Migrate
        | Command::User(_)
        | Command::Migrations(_)
        | Command::Backup(_)
        | Command::ImportLegacy(_) => {
            // The configuration says how to log, so it is read before any
            // logging; its own problems go to stderr.
            let Some(loaded) = load(&cli) else {
                return ExitCode::from(2);
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .thread_stack_size(crate::RUNTIME_THREAD_STACK_BYTES)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("pgfleet: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run_async(cli, loaded))
        }
    }
}

fn load(cli: &Cli) -> Option<LoadedConfig> {
    match pgfleet_config::load(&cli.config) {
        Ok(loaded) => Some(loaded),
        Err(error) => {
            eprintln!("pgfleet: {error}");
            None
        }
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    let Some(loaded) = load(cli) else {
        return ExitCode::from(2);
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", app::describe(&loaded));
    eprintln!(
        "pgfleet: {} is valid ({} cloud(s), {} target(s))",
        cli.config.display(),
        loaded.config.clouds.len(),
        loaded
            .config
            .clouds
            .iter()
            .map(|c| c.databases.len())
            .sum::<usize>()
    );
    ExitCode::SUCCESS
}

async fn run_async(cli: Cli, loaded: LoadedConfig) -> ExitCode {
    // Only the server exports traces; migrate and user create just log.
    let traces = matches!(cli.command, Command::Serve).then_some(&loaded.config.telemetry);
    let telemetry = match telemetry::init(Settings {
        log: &loaded.config.log,
        format: cli.log_format,
        traces,
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("pgfleet: {error}");
            return ExitCode::from(2);
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!(config = %cli.config.display(), "{warning}");
    }
    let result = match cli.command {
        Command::Migrate => {
            let history = history_store::pool(&loaded.config.history);
            let result =
                history_store::migrate(&history, &loaded.config.history, Duration::from_secs(30)).await;
            history.close().await;
            result
                .map(|()| tracing::info!("history store is up to date"))
                .map_err(app::ServeError::from)
        }
        Command::Serve => match RunningServer::start(loaded).await {
            Ok(server) => server.run_with_reload(&cli.config, app::shutdown_signal()).await,
            Err(error) => Err(error),
        },
        Command::User(UserCommand::Create {
            ref username,
            role,
            ref email,
            ref name,
            if_not_exists,
        }) => {
            let email = email.clone().unwrap_or_else(|| format!("{username}@localhost"));
            create_user(&loaded, username, role, &email, name, if_not_exists).await
        }
        Command::Migrations(command) => match crate::migrations_cli::run(&loaded, command).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                telemetry.shutdown().await;
                return ExitCode::FAILURE;
            }
            Err(error) => Err(error),
        },
        Command::Backup(command) => match crate::backup_cli::run(&loaded, command).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                telemetry.shutdown().await;
                return ExitCode::FAILURE;
            }
            Err(error) => Err(error),
        },
        Command::ImportLegacy(args) => match crate::legacy_import_cli::run(&loaded, args).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                telemetry.shutdown().await;
                return ExitCode::FAILURE;
            }
            Err(error) => Err(ServeError::from(error)),
        },
        Command::CheckConfig => Ok(()),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "pgfleet failed");
            eprintln!("pgfleet: {error}");
            ExitCode::FAILURE
        }
    };
    // Spans still in the exporter's batch and lines in the file writer's
    // buffer are written out before the process ends.
    telemetry.shutdown().await;
    code
}

fn read_password() -> Result<String, ServeError> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    let prompt_failed = |error: std::io::Error| {
        ServeError::Auth(AuthError::invalid(
            "password",
            format!("set {PASSWORD_ENV} or run on a terminal ({error})"),
        ))
    };
    let first = rpassword::prompt_password("Password: ").map_err(prompt_failed)?;
    let second = rpassword::prompt_password("Repeat password: ").map_err(prompt_failed)?;
    if first != second {
        return Err(ServeError::Auth(AuthError::invalid(
            "password",
            "the two entries differ",
        )));
    }
    Ok(first)
}

async fn create_user(
    loaded: &LoadedConfig,
    username: &str,
    role: Role,
    email: &str,
    name: &str,
    if_not_exists: bool,
) -> Result<(), ServeError> {
    let config = &loaded.config;
    let history = history_store::pool(&config.history);
    let result = async {
        history_store::migrate(&history, &config.history, Duration::from_secs(30)).await?;
        let password = read_password()?;
        let authenticator =
            Authenticator::new(history.clone(), SessionStore::memory(), config.auth.clone()).await?;
        let spec = UserSpec {
            username,
            email,
            name,
            password: &password,
            role,
        };
        match authenticator.create_user(&spec).await {
            Ok(user) => {
                println!("created {} user {:?} ({})", user.role(), user.username, user.id);
                Ok(())
            }
            Err(AuthError::AlreadyExists {
                field: "username", ..
            }) if if_not_exists => {
                println!("user {username:?} already exists; left unchanged");
                Ok(())
            }
            Err(error) => Err(ServeError::Auth(error)),
        }
    }
    .await;
    history.close().await;
    result
}
