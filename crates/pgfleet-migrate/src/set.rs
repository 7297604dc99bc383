//! Migration sets: the files of one fleet database, named, parsed, checked and
//! checksummed before anything touches a target.
//!
//! A set is refused whole at load time rather than half-applied later: every
//! file must be named `NNNN_name.sql` (or `NNNN_name.down.sql`), parse with
//! PostgreSQL's grammar, and the versions must follow each other without gaps
//! or duplicates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use pgfleet_sqlcheck::{SourcePosition, StatementAnalysis};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// The header line that makes a migration run outside a transaction block
/// (for `CREATE INDEX CONCURRENTLY` and the like).
pub const NO_TRANSACTION_MARKER: &str = "-- pgfleet:no-transaction";

/// Longest version, in digits: anything longer does not fit PostgreSQL's `bigint`.
const MAX_VERSION_DIGITS: usize = 18;

/// SHA-256 of a migration file's bytes, exactly as written (line endings and
/// comments included: any change to the file is a change to the migration).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum([u8; 32]);

impl Checksum {
    /// The checksum of `text`.
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// A checksum read back from a tracking table; `None` unless 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

/// Whether a file applies a migration or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `NNNN_name.sql`
    Up,
    /// `NNNN_name.down.sql`
    Down,
}

/// What a migration file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub version: i64,
    pub name: String,
    pub direction: Direction,
}

impl FileName {
    /// Parses `NNNN_name.sql` / `NNNN_name.down.sql`: a version of 1 to 18
    /// digits (leading zeros allowed, not 0), `_`, a name of ASCII letters,
    /// digits, `_` and `-`. The error says what is wrong.
    pub fn parse(file: &str) -> Result<Self, &'static str> {
        let stem = file
            .strip_suffix(".sql")
            .ok_or("a migration file name ends in .sql")?;
        let (stem, direction) = match stem.strip_suffix(".down") {
            Some(stem) => (stem, Direction::Down),
            None => (stem, Direction::Up),
        };
        let (digits, name) = stem
            .split_once('_')
            .ok_or("expected NNNN_name.sql: a version, an underscore, a name")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the version (before the first underscore) must be digits only");
        }
        if digits.len() > MAX_VERSION_DIGITS {
            return Err("the version has more than 18 digits");
        }
        let version: i64 = digits.parse().map_err(|_| "the version is not a number")?;
        if version == 0 {
            return Err("version 0 is not allowed: versions start at 1");
        }
        if name.is_empty() {
            return Err("the name after the version is empty");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(
                "the name may hold only ASCII letters, digits, '_' and '-' (up files end in .sql, down files in .down.sql)",
            );
        }
        Ok(Self {
            version,
            name: name.to_owned(),
            direction,
        })
    }
}

/// One file of a migration, checked.
#[derive(Debug, Clone)]
pub struct Script {
    file: String,
    sql: String,
    no_transaction: bool,
    statements: Vec<StatementAnalysis>,
}

impl Script {
    /// The file name it was loaded from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Its text, exactly as loaded (what runs on the targets).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// It carries [`NO_TRANSACTION_MARKER`]: it runs outside a transaction
    /// block and is recorded after it succeeds (it has exactly one statement).
    pub fn no_transaction(&self) -> bool {
        self.no_transaction
    }

    /// What each statement does, from pgfleet-sqlcheck (dangerous findings included).
    pub fn statements(&self) -> &[StatementAnalysis] {
        &self.statements
    }
}

/// One version of the schema: its up file and, optionally, its down file.
#[derive(Debug, Clone)]
pub struct Migration {
    version: i64,
    name: String,
    checksum: Checksum,
    up: Script,
    down: Option<Script>,
}

impl Migration {
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The name part of the file name (`0003_add_email.sql` → `add_email`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the up file (the down file is not part of it: changing how a
    /// version is undone does not change what an applied version did).
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    pub fn up(&self) -> &Script {
        &self.up
    }

    pub fn down(&self) -> Option<&Script> {
        self.down.as_ref()
    }
}

/// Why a migration set was refused. Each variant names the file (or files) at fault.
#[derive(Debug, Error)]
pub enum SetError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid UTF-8 text")]
    NotUtf8 { file: String },
    #[error("{file}: bad migration file name: {reason}")]
    BadFileName { file: String, reason: &'static str },
    #[error("{file}: given twice")]
    DuplicateFile { file: String },
    #[error("version {version} is defined twice: {first} and {second}")]
    DuplicateVersion {
        version: i64,
        first: String,
        second: String,
    },
    #[error("{file}: a down file without its up file ({expected})")]
    DownWithoutUp { file: String, expected: String },
    #[error("versions must follow each other: {file} (version {next}) comes after version {previous}; missing {}", previous + 1)]
    Gap { previous: i64, next: i64, file: String },
    #[error("{file}{}: {message}", at(position))]
    Parse {
        file: String,
        message: String,
        position: Option<SourcePosition>,
    },
    #[error("{file}: no SQL statement in it")]
    Empty { file: String },
    #[error(
        "{file}{}: {command} is not allowed in a migration: each migration runs in a transaction pgfleet opens and commits with its tracking row",
        at(&Some(*position))
    )]
    TransactionControl {
        file: String,
        command: String,
        position: SourcePosition,
    },
    #[error(
        "{file}{}: {command} cannot run inside a transaction block; put it alone in a file whose first line is `{NO_TRANSACTION_MARKER}`",
        at(&Some(*position))
    )]
    NeedsNoTransaction {
        file: String,
        command: String,
        position: SourcePosition,
    },
    #[error(
        "{file}: a `{NO_TRANSACTION_MARKER}` migration must hold exactly one statement (it has {statements}): without a transaction, a failure after the first statement would leave the others applied and the version unrecorded"
    )]
    NoTransactionNeedsOneStatement { file: String, statements: usize },
    #[error(
        "{file}, line {line}: `{NO_TRANSACTION_MARKER}` counts only in the comment lines before the first statement"
    )]
    MisplacedMarker { file: String, line: usize },
}

fn at(position: &Option<SourcePosition>) -> String {
    match position {
        Some(p) => format!(", line {}, column {}", p.line, p.column),
        None => String::new(),
    }
}

/// The migrations of one fleet database, in version order, without gaps.
#[derive(Debug, Clone, Default)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
}

impl MigrationSet {
    /// Loads every `*.sql` file of `dir` (not its subdirectories; other files
    /// such as a README and hidden files are ignored). Blocking file I/O: call
    /// it at start or from `spawn_blocking`.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self, SetError> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SetError::Io { path, source }
        };
        let mut sources = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') || !file.ends_with(".sql") {
                continue;
            }
            // Follows symlinks, so a linked file counts and a linked directory does not.
            if !std::fs::metadata(&path).map_err(io(&path))?.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let text = String::from_utf8(bytes).map_err(|_| SetError::NotUtf8 { file: file.clone() })?;
            sources.push((file, text));
        }
        Self::from_sources(sources)
    }

    /// A set from `(file name, text)` pairs (uploaded files, files kept in the
    /// history store). Every name must be a migration file name.
    pub fn from_sources<I, N, T>(sources: I) -> Result<Self, SetError>
    where
        I: IntoIterator<Item = (N, T)>,
        N: Into<String>,
        T: Into<String>,
    {
        // Sorted by file name so the first error reported does not depend on
        // the order a directory listing happens to have.
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for (file, text) in sources {
            let file = file.into();
            if files.contains_key(&file) {
                return Err(SetError::DuplicateFile { file });
            }
            files.insert(file, text.into());
        }

        let mut ups: BTreeMap<i64, (FileName, String, String)> = BTreeMap::new();
        let mut downs: Vec<(FileName, String, String)> = Vec::new();
        for (file, text) in files {
            let name = FileName::parse(&file).map_err(|reason| SetError::BadFileName {
                file: file.clone(),
                reason,
            })?;
            match name.direction {
                Direction::Up => {
                    if let Some((_, first, _)) = ups.get(&name.version) {
                        return Err(SetError::DuplicateVersion {
                            version: name.version,
                            first: first.clone(),
                            second: file,
                        });
                    }
                    ups.insert(name.version, (name, file, text));
                }
                Direction::Down => downs.push((name, file, text)),
            }
        }

        let mut down_by_version: BTreeMap<i64, (String, String)> = BTreeMap::new();
        for (name, file, text) in downs {
            let expected = format!("{:04}_{}.sql", name.version, name.name);
            match ups.get(&name.version) {
                Some((up, _, _)) if up.name == name.name => {
                    down_by_version.insert(name.version, (file, text));
                }
                Some((_, up_file, _)) => {
                    return Err(SetError::DownWithoutUp {
                        file,
                        expected: format!("version {} is {up_file}", name.version),
                    });
                }
                None => return Err(SetError::DownWithoutUp { file, expected }),
            }
        }

        let mut previous: Option<i64> = None;
        for (version, (_, file, _)) in &ups {
            if let Some(previous) = previous
                && *version != previous + 1
            {
                return Err(SetError::Gap {
                    previous,
                    next: *version,
                    file: file.clone(),
                });
            }
            previous = Some(*version);
        }

        let mut migrations = Vec::with_capacity(ups.len());
        for (version, (name, file, text)) in ups {
            let checksum = Checksum::of(&text);
            let up = check_script(file, text)?;
            let down = match down_by_version.remove(&version) {
                Some((file, text)) => Some(check_script(file, text)?),
                None => None,
            };
            migrations.push(Migration {
                version,
                name: name.name,
                checksum,
                up,
                down,
            });
        }
        Ok(Self { migrations })
    }

    /// The migrations, oldest first.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    pub fn get(&self, version: i64) -> Option<&Migration> {
        let first = self.migrations.first()?.version;
        let index = usize::try_from(version.checked_sub(first)?).ok()?;
        self.migrations.get(index)
    }

    /// The highest version, `None` for an empty set.
    pub fn newest_version(&self) -> Option<i64> {
        self.migrations.last().map(Migration::version)
    }

    pub fn len(&self) -> usize {
        self.migrations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }
}

/// Parses and classifies one file, and checks that it can run the way its
/// marker says.
fn check_script(file: String, sql: String) -> Result<Script, SetError> {
    let no_transaction = marker(&file, &sql)?;
    let analysis = pgfleet_sqlcheck::analyze(&sql).map_err(|e| SetError::Parse {
        file: file.clone(),
        message: e.message(),
        position: e.position(),
    })?;
    let statements = analysis.statements;
    if statements.is_empty() {
        return Err(SetError::Empty { file });
    }
    for statement in &statements {
        if statement.is_transaction_control {
            return Err(SetError::TransactionControl {
                file,
                command: statement.command.clone(),
                position: statement.span.start,
            });
        }
        if statement.requires_no_transaction_block && !no_transaction {
            return Err(SetError::NeedsNoTransaction {
                file,
                command: statement.command.clone(),
                position: statement.span.start,
            });
        }
    }
    if no_transaction && statements.len() != 1 {
        return Err(SetError::NoTransactionNeedsOneStatement {
            file,
            statements: statements.len(),
        });
    }
    Ok(Script {
        file,
        sql,
        no_transaction,
        statements,
    })
}

/// Whether the header (the blank and `--` comment lines before the first
/// statement) holds [`NO_TRANSACTION_MARKER`]; the marker anywhere else is refused,
/// so a misplaced marker never silently runs a migration in a transaction.
fn marker(file: &str, sql: &str) -> Result<bool, SetError> {
    let mut in_header = true;
    let mut found = false;
    for (index, line) in sql.lines().enumerate() {
        let line = line.trim();
        let is_marker = line == NO_TRANSACTION_MARKER;
        if in_header && !(line.is_empty() || line.starts_with("--")) {
            in_header = false;
        }
        if is_marker {
            if !in_header {
                return Err(SetError::MisplacedMarker {
                    file: file.to_owned(),
                    line: index + 1,
                });
            }
            found = true;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let up = |v: i64, n: &str| {
            Ok(FileName {
                version: v,
                name: n.to_owned(),
                direction: Direction::Up,
            })
        };
        let down = |v: i64, n: &str| {
            Ok(FileName {
                version: v,
                name: n.to_owned(),
                direction: Direction::Down,
            })
        };
        let cases: &[(&str, Result<FileName, ()>)] = &[
            ("0001_init.sql", up(1, "init")),
            ("1_init.sql", up(1, "init")),
            ("0042_add-email_2.sql", up(42, "add-email_2")),
            ("0042_add_email.down.sql", down(42, "add_email")),
            ("000000000000000007_x.sql", up(7, "x")),
            ("0001_init.up.sql", Err(())),
            ("0001_init.txt", Err(())),
            ("0001init.sql", Err(())),
            ("_init.sql", Err(())),
            ("v1_init.sql", Err(())),
            ("0000_init.sql", Err(())),
            ("0001_.sql", Err(())),
            ("0001_in it.sql", Err(())),
            ("0001_café.sql", Err(())),
            ("1234567890123456789_big.sql", Err(())),
            ("0001_init.down.down.sql", Err(())),
        ];
        for (file, want) in cases {
            let got = FileName::parse(file).map_err(|_| ());
            assert_eq!(&got, want, "case {file}");
        }
    }

    #[test]
    fn bad_names_say_why() {
        let reason = FileName::parse("0001_init.up.sql").err();
        assert!(reason.is_some_and(|r| r.contains(".down.sql")), "{reason:?}");
        let reason = FileName::parse("0000_init.sql").err();
        assert!(reason.is_some_and(|r| r.contains("start at 1")), "{reason:?}");
    }

    #[test]
    fn checksum_is_sha256_of_the_exact_bytes() {
        // SHA-256("") and SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            Checksum::of("").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Checksum::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(
            Checksum::of("SELECT 1;\n"),
            Checksum::of("SELECT 1;\r\n"),
            "line endings count"
        );
        let sum = Checksum::of("abc");
        assert_eq!(Checksum::from_slice(sum.as_bytes()), Some(sum));
        assert_eq!(Checksum::from_slice(&[0; 31]), None);
    }

    #[test]
    fn marker_only_in_the_header() {
        let cases: &[(&str, Option<bool>)] = &[
            (
                "-- pgfleet:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
                Some(true),
            ),
            ("-- why\n\n  -- pgfleet:no-transaction  \nVACUUM t;", Some(true)),
            ("CREATE TABLE t (a int);", Some(false)),
            ("-- pgfleet:no-transactions\nSELECT 1;", Some(false)),
            ("SELECT 1;\n-- pgfleet:no-transaction\n", None),
        ];
        for (sql, want) in cases {
            assert_eq!(marker("f.sql", sql).ok(), *want, "case {sql:?}");
        }
    }

    #[test]
    fn get_by_version() {
        let set = MigrationSet::from_sources([("0003_a.sql", "SELECT 1;"), ("0004_b.sql", "SELECT 2;")]);
        let set = match set {
            Ok(set) => set,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(set.get(3).map(Migration::name), Some("a"));
        assert_eq!(set.get(4).map(Migration::name), Some("b"));
        assert!(set.get(2).is_none() && set.get(5).is_none());
        assert_eq!(set.newest_version(), Some(4));
    }
}
