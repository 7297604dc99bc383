//! The audit chain key: one secret, kept outside the history store, from
//! which come the HMAC-SHA-256 of every link, the MACs of the seal and the
//! anchor, and the Ed25519 key that signs checkpoints.
//!
//! A key is known by its id, a fingerprint derived from the key itself, so
//! a link made with another key reads "made with key X, not configured"
//! rather than "tampered with". The raw key is not kept: only HMAC state
//! keyed with it and the derived signing key.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use pgfleet_config::{AuditChainConfig, MIN_CHAIN_KEY_BYTES};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::Sha256;

use super::record::LinkKind;

type HmacSha256 = Hmac<Sha256>;

/// Labels that separate what each derived value is for, so no MAC made
/// for one purpose is valid for another.
const KEY_ID_LABEL: &[u8] = b"pgfleet-audit-key-id-v1";
const SIGNING_SEED_LABEL: &[u8] = b"pgfleet-audit-checkpoint-signing-v1";
const LINK_LABEL: &str = "pgfleet-audit-v2";
const SEAL_LABEL: &str = "pgfleet-audit-seal-v1";
const ANCHOR_LABEL: &str = "pgfleet-audit-anchor-v1";

/// Hex digits of a key id (64 bits: an identity, not a security margin).
const KEY_ID_HEX_LEN: usize = 16;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the
/// 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why the configured chain keys cannot be used. Messages name files and
/// settings, never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum ChainKeyError {
    #[error(
        "no audit chain key: set [audit.chain] key or key_file (at least {MIN_CHAIN_KEY_BYTES} bytes, kept \
         outside the history store), or allow_unkeyed = true to run with a chain that anyone who can \
         write the history store can rewrite undetected"
    )]
    Missing,
    #[error("cannot read the audit chain key file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit chain key {origin} is shorter than {MIN_CHAIN_KEY_BYTES} bytes")]
    TooShort { origin: String },
    #[error("cannot derive the checkpoint signing key: {0}")]
    Signing(String),
}

/// One chain key.
pub struct ChainKey {
    id: String,
    /// HMAC state keyed with the key; cloned for each MAC.
    mac: HmacSha256,
    signing: Ed25519KeyPair,
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ChainKey {
    /// A key from its secret bytes (already checked for length).
    pub fn from_secret(secret: &[u8]) -> Result<Self, ChainKeyError> {
        // HMAC takes keys of any length, so this cannot fail.
        let mac = HmacSha256::new_from_slice(secret).map_err(|e| ChainKeyError::Signing(e.to_string()))?;
        let derive = |label: &[u8]| {
            let mut derived = mac.clone();
            derived.update(label);
            derived.finalize().into_bytes()
        };
        let id = hex(&derive(KEY_ID_LABEL))[..KEY_ID_HEX_LEN].to_owned();
        // HMAC as the PRF of HKDF-Expand with one block: a uniformly random
        // 32-byte seed for Ed25519, separate from every MAC by its label.
        let seed = derive(SIGNING_SEED_LABEL);
        let signing =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| ChainKeyError::Signing(e.to_string()))?;
        Ok(Self { id, mac, signing })
    }

    /// The key's identity, recorded with everything it made.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac_hex(&self, input: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(input);
        hex(&mac.finalize().into_bytes())
    }

    /// The hash of a keyed chain link: HMAC over the key id, the previous
    /// hash, the sequence, the link kind and the record's canonical content.
    pub fn link_hash(&self, prev_hash: &str, sequence: i64, link: LinkKind, content: &[u8]) -> String {
        let mut input = format!(
            "{LINK_LABEL}\n{}\n{prev_hash}\n{sequence}\n{}\n",
            self.id,
            link.as_str()
        )
        .into_bytes();
        input.extend_from_slice(content);
        self.mac_hex(&input)
    }

    /// The MAC of the seal: every link from `keyed_since` on is keyed, and
    /// the link before it has `prev_hash`.
    pub fn seal_mac(&self, keyed_since: i64, prev_hash: &str) -> String {
        self.mac_hex(format!("{SEAL_LABEL}\n{}\n{keyed_since}\n{prev_hash}\n", self.id).as_bytes())
    }

    /// The MAC of the anchor retention leaves.
    pub fn anchor_mac(
        &self,
        sequence: i64,
        hash: &str,
        newest_deleted_started_at: Option<DateTime<Utc>>,
    ) -> String {
        let started = newest_deleted_started_at
            .map(|at| at.timestamp_micros().to_string())
            .unwrap_or_default();
        self.mac_hex(format!("{ANCHOR_LABEL}\n{}\n{sequence}\n{hash}\n{started}\n", self.id).as_bytes())
    }

    /// Signs `message` with the Ed25519 key derived from this key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).as_ref().to_vec()
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.public_key())
            .verify(message, signature)
            .is_ok()
    }

    /// The Ed25519 public key (32 bytes) that checks checkpoints.
    pub fn public_key(&self) -> &[u8] {
        self.signing.public_key().as_ref()
    }

    /// [`ChainKey::public_key`] as a PEM SubjectPublicKeyInfo (what
    /// `openssl pkeyutl -pubin` reads).
    pub fn public_key_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.public_key());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }
}

/// Constant-time comparison of two MACs (hex text).
pub fn macs_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The keys of one server: the current one links and signs; previous ones
/// only verify what they made before a rotation.
#[derive(Debug, Default)]
pub struct ChainKeys {
    current: Option<ChainKey>,
    previous: Vec<ChainKey>,
}

impl ChainKeys {
    /// Reads the keys `config` names (files once, now). Without a current
    /// key this is an error unless `allow_unkeyed`.
    pub fn load(config: &AuditChainConfig) -> Result<Self, ChainKeyError> {
        let current = match (&config.key, &config.key_file) {
            (Some(key), _) => Some(checked(key.expose().as_bytes(), "audit.chain.key")?),
            (None, Some(file)) => Some(read_key_file(file)?),
            (None, None) => None,
        };
        if current.is_none() && !config.allow_unkeyed {
            return Err(ChainKeyError::Missing);
        }
        let mut previous = Vec::new();
        for (index, key) in config.previous_keys.iter().enumerate() {
            previous.push(checked(
                key.expose().as_bytes(),
                &format!("audit.chain.previous_keys[{index}]"),
            )?);
        }
        for file in &config.previous_key_files {
            previous.push(read_key_file(file)?);
        }
        Self::from_secrets(current.as_deref(), previous.iter().map(Vec::as_slice))
    }

    /// Keys from their secret bytes.
    pub fn from_secrets<'a>(
        current: Option<&[u8]>,
        previous: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, ChainKeyError> {
        let current = current.map(ChainKey::from_secret).transpose()?;
        let mut keys = Self {
            current,
            previous: Vec::new(),
        };
        for secret in previous {
            let key = ChainKey::from_secret(secret)?;
            // The same key listed twice (or as current too) is one key.
            if keys.find(key.id()).is_none() {
                keys.previous.push(key);
            }
        }
        Ok(keys)
    }

    /// The key new links are made with; none when running unkeyed.
    pub fn current(&self) -> Option<&ChainKey> {
        self.current.as_ref()
    }

    /// The configured key with this id, current or previous.
    pub fn find(&self, id: &str) -> Option<&ChainKey> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|key| key.id() == id)
    }

    /// Every configured key id, current first, for messages.
    pub fn describe(&self) -> String {
        let ids: Vec<&str> = self
            .current
            .iter()
            .chain(&self.previous)
            .map(ChainKey::id)
            .collect();
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    }
}

fn checked(secret: &[u8], origin: &str) -> Result<Vec<u8>, ChainKeyError> {
    let trimmed = trim_end(secret);
    if trimmed.len() < MIN_CHAIN_KEY_BYTES {
        return Err(ChainKeyError::TooShort {
            origin: origin.to_owned(),
        });
    }
    Ok(trimmed.to_vec())
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, ChainKeyError> {
    let bytes = std::fs::read(path).map_err(|source| ChainKeyError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    checked(&bytes, &format!("file {}", path.display()))
}

/// A key written with `echo` or `openssl rand -base64` ends in a newline
/// that is not part of it.
fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-first";
    const OTHER: &[u8] = b"0123456789abcdef0123456789abcdef-other";

    fn key(secret: &[u8]) -> ChainKey {
        ChainKey::from_secret(secret).expect("a valid key")
    }

    #[test]
    fn a_key_id_is_a_stable_fingerprint_of_the_key() {
        assert_eq!(key(SECRET).id(), key(SECRET).id());
        assert_ne!(key(SECRET).id(), key(OTHER).id());
        assert_eq!(key(SECRET).id().len(), KEY_ID_HEX_LEN);
        assert!(!format!("{:?}", key(SECRET)).contains("0123456789"));
    }

    #[test]
    fn every_mac_depends_on_the_key_and_each_input() {
        let (a, b) = (key(SECRET), key(OTHER));
        let link = |k: &ChainKey, prev: &str, seq: i64, kind: LinkKind, content: &[u8]| {
            k.link_hash(prev, seq, kind, content)
        };
        let base = link(&a, "ab", 7, LinkKind::Opened, b"{}");
        let variants = [
            ("other key", link(&b, "ab", 7, LinkKind::Opened, b"{}")),
            ("prev", link(&a, "ac", 7, LinkKind::Opened, b"{}")),
            ("sequence", link(&a, "ab", 8, LinkKind::Opened, b"{}")),
            ("kind", link(&a, "ab", 7, LinkKind::Closed, b"{}")),
            ("content", link(&a, "ab", 7, LinkKind::Opened, b"{ }")),
            // Not the unkeyed hash of the same link.
            (
                "unkeyed",
                super::super::record::link_hash("ab", 7, LinkKind::Opened, b"{}"),
            ),
        ];
        for (name, variant) in variants {
            assert_ne!(base, variant, "{name}");
        }
        assert_eq!(base, link(&a, "ab", 7, LinkKind::Opened, b"{}"));

        let at = DateTime::from_timestamp_micros(1_700_000_000_000_001);
        assert_ne!(a.anchor_mac(4, "h", at), a.anchor_mac(4, "h", None));
        assert_ne!(a.anchor_mac(4, "h", at), a.anchor_mac(5, "h", at));
        assert_ne!(a.anchor_mac(4, "h", at), b.anchor_mac(4, "h", at));
        assert_ne!(a.seal_mac(4, "h"), a.seal_mac(5, "h"));
        assert_ne!(a.seal_mac(4, "h"), a.seal_mac(4, "i"));
        // A seal MAC is never an anchor MAC of the same numbers.
        assert_ne!(a.seal_mac(4, "h"), a.anchor_mac(4, "h", None));
    }

    #[test]
    fn signatures_verify_only_with_the_same_key_and_text() {
        let (a, b) = (key(SECRET), key(OTHER));
        let signature = a.sign(b"head 7");
        assert_eq!(signature.len(), 64);
        assert!(a.verify_signature(b"head 7", &signature));
        assert!(!a.verify_signature(b"head 8", &signature));
        assert!(!b.verify_signature(b"head 7", &signature));
        assert_eq!(a.public_key().len(), 32);
        assert!(
            a.public_key_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA")
        );
    }

    #[test]
    fn loading_keys_from_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("chain.key");
        std::fs::write(&file, [SECRET, b"\n"].concat()).expect("write key");
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"tiny\n").expect("write key");
        let from_file = AuditChainConfig {
            key_file: Some(file.clone()),
            ..AuditChainConfig::default()
        };
        let from_text = AuditChainConfig {
            key: Some(pgfleet_config::Secret::new(String::from_utf8_lossy(SECRET))),
            previous_key_files: vec![file.clone()],
            ..AuditChainConfig::default()
        };
        let loaded = ChainKeys::load(&from_file).expect("key file");
        // The trailing newline of the file is not part of the key.
        assert_eq!(loaded.current().map(ChainKey::id), Some(key(SECRET).id()));
        let both = ChainKeys::load(&from_text).expect("inline key");
        assert_eq!(both.describe(), key(SECRET).id(), "one key listed twice");

        let failures = [
            ("nothing", AuditChainConfig::default(), "no audit chain key"),
            (
                "short file",
                AuditChainConfig {
                    key_file: Some(short),
                    ..AuditChainConfig::default()
                },
                "shorter than 32 bytes",
            ),
            (
                "missing file",
                AuditChainConfig {
                    key_file: Some(dir.path().join("absent")),
                    ..AuditChainConfig::default()
                },
                "cannot read the audit chain key file",
            ),
        ];
        for (name, config, expected) in failures {
            let error = ChainKeys::load(&config).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(expected)),
                "{name}: {error:?}"
            );
        }
        let unkeyed = ChainKeys::load(&AuditChainConfig {
            allow_unkeyed: true,
            ..AuditChainConfig::default()
        })
        .expect("allowed");
        assert!(unkeyed.current().is_none());
    }
}
