//! A string that must never reach a log, an error or a response.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// What a [`Secret`] shows wherever it is printed or serialized.
pub const REDACTED: &str = "<redacted>";

/// A password or a URL that may carry one. `Debug`, `Display` and
/// `Serialize` all print [`REDACTED`]; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for handing to a driver. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was given (trust or certificate auth).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `any`, not `string`: serde_json's value deserializer answers a
        // `string` request for a number with its own error, quoting it.
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Takes a string; refuses anything else without the value in the message.
/// serde's own errors quote a wrong scalar (``invalid type: integer `123…`,
/// expected a string``), which put an unquoted numeric password into
/// `pgfleet check-config`'s output and the server's start-up error.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(&self, what: &'static str) -> Result<Secret, E> {
        Err(E::invalid_type(de::Unexpected::Other(what), self))
    }
}

impl de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (quote a secret that looks like a number; the value is not shown)")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret(value))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        self.refuse("a boolean")
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        self.refuse("a number")
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        self.refuse("a number")
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        self.refuse("a number")
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        self.refuse("a number")
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        self.refuse("a number")
    }

    fn visit_char<E: de::Error>(self, value: char) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        self.refuse("bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert!(!serde_json::to_string(&secret).unwrap().contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    /// Found by the config fuzzer (tests/fuzz.rs): a password written as a
    /// number was quoted back in the "invalid type" error.
    #[test]
    fn a_wrong_type_is_refused_without_the_value() {
        for value in [
            serde_json::json!(8675309123_u64),
            serde_json::json!(-8675309123_i64),
            serde_json::json!(86753.09123),
        ] {
            let error = serde_json::from_value::<Secret>(value).expect_err("not a string");
            let shown = error.to_string();
            assert!(!shown.contains("8675309") && !shown.contains("86753"), "{shown}");
            assert!(shown.contains("a number"), "{shown}");
        }
        let secret: Secret = serde_json::from_value(serde_json::json!("hunter2")).expect("a string");
        assert_eq!(secret.expose(), "hunter2");
    }
}
