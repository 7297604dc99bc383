//! `[audit.chain]`: the chain key from text, `${VAR}` or a file, its
//! problems named by path and never echoed, and never rendered.

use std::collections::HashMap;
use std::path::Path;

use pgfleet_config::{ConfigError, FileFormat, Inputs, LoadedConfig, load_str, render_redacted};

const BASE: &str = "[history]\nhost = 'h'\nuser = 'u'\ndatabase = 'd'\n\
                    [[clouds]]\nname = 'aws'\n[[clouds.databases]]\nname = 'db1'\nhost = 'a'\nuser = 'u'\n\
                    database = 'd'\n";

const KEY: &str = "k3y-material-that-is-long-enough-0123456789";

fn load(chain: &str, variables: &[(&str, &str)]) -> Result<LoadedConfig, ConfigError> {
    let variables: HashMap<String, String> = variables
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    load_str(
        &format!("{BASE}[audit]\nreads = true\n[audit.chain]\n{chain}\n"),
        FileFormat::Toml,
        Path::new("chain.toml"),
        &Inputs {
            variables: &variables,
            overrides: Vec::new(),
        },
    )
}

#[test]
fn the_key_comes_from_a_variable_and_is_never_rendered() {
    let loaded = load(
        "key = '${AUDIT_KEY}'\ncheckpoint_log_interval = '10m'",
        &[("AUDIT_KEY", KEY)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let chain = &loaded.config.audit.chain;
    assert_eq!(chain.key.as_ref().map(|k| k.expose()), Some(KEY));
    assert_eq!(chain.checkpoint_log_interval.as_secs(), 600);
    assert!(!chain.allow_unkeyed);
    assert!(
        loaded.config.audit.reads,
        "[audit] after [audit.chain] still applies"
    );
    let rendered = render_redacted(&loaded.config);
    assert!(!rendered.contains(KEY), "{rendered}");
    assert!(!format!("{:?}", loaded.config).contains(KEY));
}

#[test]
fn bad_chain_settings_name_their_path_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let present = dir.path().join("chain.key");
    std::fs::write(&present, KEY).unwrap_or_else(|e| panic!("{e}"));
    let absent = dir.path().join("absent.key");
    let cases = [
        ("key = 'short-key'", "audit.chain.key: must be at least 32 bytes"),
        (
            "previous_keys = ['also-short']",
            "audit.chain.previous_keys[0]: must be at least 32 bytes",
        ),
        (
            &format!("key = '{KEY}'\nkey_file = '{}'", present.display()),
            "audit.chain.key_file: set together with key",
        ),
        (
            &format!("key_file = '{}'", absent.display()),
            "audit.chain.key_file: ",
        ),
        (
            &format!("previous_key_files = ['{}']", absent.display()),
            "audit.chain.previous_key_files[0]: ",
        ),
        (
            "checkpoint_log_interval = '10ms'",
            "audit.chain.checkpoint_log_interval: must be at least 1s",
        ),
        ("keys = 'typo'", "keys"),
    ];
    for (chain, expected) in cases {
        let error = load(chain, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{chain}: accepted"));
        assert!(error.contains(expected), "{chain}: {error}");
        assert!(
            !error.contains("short-key") && !error.contains(KEY),
            "{chain}: {error}"
        );
    }
    // No key at all is a valid file: the server, not the file, refuses it
    // (check-config and migrations need none).
    assert!(load("", &[]).is_ok());
    assert!(load("checkpoint_log_interval = '0s'", &[]).is_ok());
    let from_file = load(&format!("key_file = '{}'", present.display()), &[]);
    assert!(from_file.is_ok(), "{:?}", from_file.err().map(|e| e.to_string()));
}
