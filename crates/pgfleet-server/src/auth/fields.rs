//! Checks of user-supplied account fields, shared by `AuthService` and the
//! `pgfleet user` command so both accept exactly the same values.

use super::AuthError;

/// Lower-cases and checks a username: 2 to 63 of `a-z 0-9 . _ -`, starting
/// with a letter or digit.
pub fn normalize_username(field: &str, username: &str) -> Result<String, AuthError> {
    let lowered = username.to_lowercase();
    let valid_chars = lowered
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    let starts_well = lowered
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if username.is_empty() {
        return Err(AuthError::invalid(field, "must not be empty"));
    }
    if !(2..=63).contains(&lowered.len()) || !valid_chars || !starts_well {
        return Err(AuthError::invalid(
            field,
            "must be 2 to 63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    Ok(lowered)
}

pub fn check_email(email: &str) -> Result<String, AuthError> {
    let trimmed = email.trim();
    let well_formed = trimmed
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if trimmed.is_empty() {
        return Err(AuthError::invalid("email", "must not be empty"));
    }
    if !well_formed || trimmed.len() > 254 || trimmed.chars().any(char::is_whitespace) {
        return Err(AuthError::invalid(
            "email",
            "must be an address like name@example.com",
        ));
    }
    Ok(trimmed.to_owned())
}

pub fn check_display_name(field: &str, name: &str, max: usize) -> Result<String, AuthError> {
    let trimmed = name.trim();
    if trimmed.chars().count() > max {
        return Err(AuthError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AuthError::invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(
            normalize_username("username", "Alice.B").ok(),
            Some("alice.b".to_owned())
        );
        for bad in ["", "a", "-alice", "al ice", "ålice", &"a".repeat(64)] {
            assert!(normalize_username("username", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_and_names_are_checked() {
        assert_eq!(
            check_email(" Ops@Example.com ").ok(),
            Some("Ops@Example.com".to_owned())
        );
        for bad in ["", "ops", "@example.com", "ops@", "a b@example.com", "a@b@c"] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_display_name("name", "Ada\u{7}", 200).is_err());
        assert!(check_display_name("name", &"x".repeat(201), 200).is_err());
        assert_eq!(
            check_display_name("name", " Ada ", 200).ok(),
            Some("Ada".to_owned())
        );
    }
}
