//! Signed checkpoints of the chain's head: what a SIEM keeps so that
//! deleting the newest records (and moving the head back) shows later.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};

use super::keys::{ChainKey, ChainKeys};

/// First line of the signed text; a new layout gets a new version.
const CHECKPOINT_LABEL: &str = "pgfleet-audit-checkpoint-v1";

/// Where the chain stood when a checkpoint was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub head_sequence: i64,
    pub head_hash: String,
    pub anchor_sequence: i64,
    pub anchor_hash: String,
    /// The seal's sequence; 0 when the chain was never keyed.
    pub keyed_since: i64,
    /// Microsecond precision, so it survives the wire and the text.
    pub created_at: DateTime<Utc>,
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::signed_text`].
    pub signature: Vec<u8>,
}

/// Why a checkpoint handed to VerifyChain is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointRejection {
    #[error("signed with key {0}, which is not configured on this server")]
    UnknownKey(String),
    #[error("does not verify with key {0}: not a checkpoint pgfleet signed, or altered since")]
    BadSignature(String),
}

impl Checkpoint {
    /// Signs where the chain stands now with `key`.
    pub fn sign(
        key: &ChainKey,
        head: (i64, String),
        anchor: (i64, String),
        keyed_since: i64,
        created_at: DateTime<Utc>,
    ) -> Self {
        let created_at = DateTime::from_timestamp_micros(created_at.timestamp_micros()).unwrap_or(created_at);
        let mut checkpoint = Self {
            head_sequence: head.0,
            head_hash: head.1,
            anchor_sequence: anchor.0,
            anchor_hash: anchor.1,
            keyed_since,
            created_at,
            key_id: key.id().to_owned(),
            signature: Vec::new(),
        };
        checkpoint.signature = key.sign(checkpoint.signed_text().as_bytes());
        checkpoint
    }

    /// The exact text the signature covers: one `name=value` line per
    /// field, so a SIEM can check it with any Ed25519 tool.
    pub fn signed_text(&self) -> String {
        format!(
            "{CHECKPOINT_LABEL}\nkey_id={}\nhead_sequence={}\nhead_hash={}\nanchor_sequence={}\n\
             anchor_hash={}\nkeyed_since={}\ncreated_at={}\n",
            self.key_id,
            self.head_sequence,
            self.head_hash,
            self.anchor_sequence,
            self.anchor_hash,
            self.keyed_since,
            self.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        )
    }

    /// Checks the signature with the configured key it names.
    pub fn verify<'k>(&self, keys: &'k ChainKeys) -> Result<&'k ChainKey, CheckpointRejection> {
        let key = keys
            .find(&self.key_id)
            .ok_or_else(|| CheckpointRejection::UnknownKey(self.key_id.clone()))?;
        if key.verify_signature(self.signed_text().as_bytes(), &self.signature) {
            Ok(key)
        } else {
            Err(CheckpointRejection::BadSignature(self.key_id.clone()))
        }
    }

    /// One-line JSON with the wire message's field names, for the log: it
    /// can be handed back as VerifyChain's `checkpoint` as it is.
    pub fn to_log_json(&self) -> String {
        serde_json::json!({
            "head_sequence": self.head_sequence.to_string(),
            "head_hash": self.head_hash,
            "anchor_sequence": self.anchor_sequence.to_string(),
            "anchor_hash": self.anchor_hash,
            "keyed_since": self.keyed_since.to_string(),
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "key_id": self.key_id,
            "signature": STANDARD.encode(&self.signature),
            "signed_text": self.signed_text(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8]) -> ChainKeys {
        ChainKeys::from_secrets(Some(secret), []).expect("valid key")
    }

    #[test]
    fn any_change_to_a_checkpoint_breaks_its_signature() {
        let signer = keys(b"a-checkpoint-key-of-thirty-two-bytes-or-more");
        let key = signer.current().expect("current key");
        let created = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let signed = Checkpoint::sign(key, (10, "h10".into()), (4, "h4".into()), 3, created);
        assert_eq!(signed.verify(&signer).ok().map(ChainKey::id), Some(key.id()));
        assert!(
            signed
                .signed_text()
                .contains("created_at=2023-11-14T22:13:20.123456Z\n")
        );

        type Alteration = Box<dyn Fn(&mut Checkpoint)>;
        let altered: [(&str, Alteration); 7] = [
            ("head_sequence", Box::new(|c| c.head_sequence -= 2)),
            ("head_hash", Box::new(|c| c.head_hash = "h8".into())),
            ("anchor_sequence", Box::new(|c| c.anchor_sequence = 6)),
            ("anchor_hash", Box::new(|c| c.anchor_hash = "h6".into())),
            ("keyed_since", Box::new(|c| c.keyed_since = 9)),
            (
                "created_at",
                Box::new(|c| c.created_at += chrono::Duration::microseconds(1)),
            ),
            ("signature", Box::new(|c| c.signature[0] ^= 1)),
        ];
        for (field, alter) in altered {
            let mut forged = signed.clone();
            alter(&mut forged);
            assert_eq!(
                forged.verify(&signer).err(),
                Some(CheckpointRejection::BadSignature(key.id().to_owned())),
                "{field}"
            );
        }

        // Signed with another key, claiming this key's id.
        let other = keys(b"another-key-that-the-server-never-had-configured");
        let mut forged = Checkpoint::sign(
            other.current().expect("current key"),
            (10, "h10".into()),
            (4, "h4".into()),
            3,
            created,
        );
        assert!(matches!(
            forged.verify(&signer),
            Err(CheckpointRejection::UnknownKey(_))
        ));
        forged.key_id = key.id().to_owned();
        forged.signature = other
            .current()
            .expect("current key")
            .sign(forged.signed_text().as_bytes());
        assert!(matches!(
            forged.verify(&signer),
            Err(CheckpointRejection::BadSignature(_))
        ));
    }

    #[test]
    fn the_log_form_carries_every_field() {
        let signer = keys(b"a-checkpoint-key-of-thirty-two-bytes-or-more");
        let created = DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("time");
        let signed = Checkpoint::sign(
            signer.current().expect("current key"),
            (2, "b".into()),
            (0, String::new()),
            1,
            created,
        );
        let json: serde_json::Value = serde_json::from_str(&signed.to_log_json()).expect("json");
        assert_eq!(json["head_sequence"], "2");
        assert_eq!(json["keyed_since"], "1");
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(json["signed_text"], signed.signed_text());
        let signature = STANDARD
            .decode(json["signature"].as_str().unwrap_or_default())
            .expect("base64");
        assert_eq!(signature, signed.signature);
    }
}
