//! Password policy and bcrypt hashing, off the async runtime.

use std::sync::Arc;

use super::AuthError;

/// bcrypt only reads the first 72 bytes; longer passwords are refused rather
/// than silently truncated.
const BCRYPT_MAX_BYTES: usize = 72;

/// Hashes and checks passwords with one configured cost.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    min_length: usize,
    /// A real hash of a random password, checked when a username is unknown
    /// so that an unknown user costs the same time as a wrong password.
    decoy_hash: Arc<str>,
}

impl PasswordHasher {
    /// A hasher for `cost` (4..=31, validated by the config).
    pub async fn new(cost: u32, min_length: u32) -> Result<Self, AuthError> {
        let decoy = super::credentials::SessionToken::generate();
        let decoy_hash = hash_blocking(decoy.expose().to_owned(), cost).await?;
        Ok(Self {
            cost,
            min_length: usize::try_from(min_length).unwrap_or(usize::MAX),
            decoy_hash: decoy_hash.into(),
        })
    }

    /// Checks the policy for `password` of `username`; `field` names the
    /// request field in the error.
    pub fn check_policy(&self, field: &str, username: &str, password: &str) -> Result<(), AuthError> {
        let chars = password.chars().count();
        if chars < self.min_length {
            return Err(AuthError::invalid(
                field,
                format!("must be at least {} characters", self.min_length),
            ));
        }
        if password.len() > BCRYPT_MAX_BYTES {
            return Err(AuthError::invalid(
                field,
                format!("must be at most {BCRYPT_MAX_BYTES} bytes"),
            ));
        }
        if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
            return Err(AuthError::invalid(field, "must not contain the username"));
        }
        Ok(())
    }

    /// A new bcrypt hash of `password`.
    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        hash_blocking(password.to_owned(), self.cost).await
    }

    /// True when `password` matches `stored`; with `stored == None` (unknown
    /// user) checks the decoy and returns false, taking the same time.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, AuthError> {
        let known = stored.is_some();
        let hash = stored.unwrap_or(&self.decoy_hash).to_owned();
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|error| AuthError::Internal(format!("bcrypt task: {error}")))?
            // A malformed stored hash is a broken row, never a match.
            .unwrap_or(false);
        Ok(known && matches)
    }

    /// True when `stored` was hashed with another cost and should be
    /// re-hashed now that the password is known.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        bcrypt_cost_of(stored) != Some(self.cost)
    }
}

/// Checks that `hash`, from another system, is a bcrypt hash pgfleet
/// verifies as it is (`$2a$` as Node's bcryptjs writes, `$2b$`, `$2y$`;
/// cost 4 to 31), so the password keeps working; it is re-hashed with the
/// configured cost at the first login. `$2x$` (hashes of a buggy PHP
/// implementation) and anything else is refused. The reason never repeats
/// the hash.
pub fn check_foreign_hash(hash: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|error| format!("not a bcrypt hash ({error})"))?;
    if !matches!(hash.get(..4), Some("$2a$" | "$2b$" | "$2y$")) {
        return Err("a $2x$ bcrypt hash (the buggy variant) cannot be verified safely".to_owned());
    }
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!("bcrypt cost {} is outside 4..=31", parts.get_cost()));
    }
    Ok(())
}

fn bcrypt_cost_of(hash: &str) -> Option<u32> {
    // $2b$12$<salt+hash>
    hash.split('$').nth(2)?.parse().ok()
}

async fn hash_blocking(password: String, cost: u32) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|error| AuthError::Internal(format!("bcrypt task: {error}")))?
        .map_err(|error| AuthError::Internal(format!("bcrypt: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let hasher = PasswordHasher::new(4, 12).await.expect("hasher");
        let hash = hasher.hash("correct horse battery").await.expect("hash");
        assert!(hash.starts_with("$2b$04$"));
        assert!(
            hasher
                .verify("correct horse battery", Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("wrong horse battery", Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("correct horse battery", None)
                .await
                .expect("verify")
        );
        assert!(!hasher.verify("x", Some("not a hash")).await.expect("verify"));
        assert!(!hasher.needs_rehash(&hash));
        let stronger = PasswordHasher::new(5, 12).await.expect("hasher");
        assert!(stronger.needs_rehash(&hash));
    }

    #[test]
    fn foreign_hashes_are_bcrypt_or_refused_without_being_repeated() {
        let node = bcrypt::hash_with_result("old password", 4)
            .expect("hash")
            .format_for_version(bcrypt::Version::TwoA);
        assert!(check_foreign_hash(&node).is_ok());
        assert!(bcrypt::verify("old password", &node).expect("verify"));
        let modern = bcrypt::hash("old password", 4).expect("hash");
        assert!(check_foreign_hash(&modern).is_ok());
        for bad in [
            "5f4dcc3b5aa765d61d8327deb882cf99".to_owned(),
            String::new(),
            node.replacen("$2a$", "$2x$", 1),
            node.replacen("$04$", "$03$", 1),
        ] {
            let reason = check_foreign_hash(&bad).expect_err("refused");
            assert!(bad.is_empty() || !reason.contains(&bad), "{reason}");
        }
    }

    #[tokio::test]
    async fn policy_names_the_field_and_the_rule() {
        let hasher = PasswordHasher::new(4, 12).await.expect("hasher");
        let short = hasher.check_policy("password", "alice", "short");
        assert!(matches!(short, Err(AuthError::InvalidArgument { ref field, .. }) if field == "password"));
        let named = hasher.check_policy("new_password", "alice", "my-ALICE-password-1");
        assert!(
            matches!(named, Err(AuthError::InvalidArgument { ref message, .. }) if message.contains("username"))
        );
        let long = "x".repeat(73);
        assert!(hasher.check_policy("password", "alice", &long).is_err());
        assert!(
            hasher
                .check_policy("password", "alice", "a perfectly fine passphrase")
                .is_ok()
        );
    }
}
