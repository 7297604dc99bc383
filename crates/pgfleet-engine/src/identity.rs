//! Who is calling: set by the authentication layer on every request that
//! passed it, read by every service. Services never authenticate themselves.

use std::fmt;

use pgfleet_registry::Target;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// pgfleet roles, ordered: a higher role may do everything a lower one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Reads only.
    Reader,
    /// Reads and DML.
    User,
    /// Everything, including user management and dangerous statements.
    Master,
}

impl Role {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "READER",
            Role::User => "USER",
            Role::Master => "MASTER",
        }
    }

    /// Parses a stored role name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "READER" => Some(Role::Reader),
            "USER" => Some(Role::User),
            "MASTER" => Some(Role::Master),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role as stored in a text column (users, API keys), for sqlx's
/// `try_from = "String"`; the tables' CHECK constraints keep it valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRole(pub Role);

impl TryFrom<String> for StoredRole {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Role::parse(&value)
            .map(StoredRole)
            .ok_or_else(|| format!("unknown role {value:?}"))
    }
}

/// A (cloud, database) pattern of an API key's allow-list; `*` matches any name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetPattern {
    pub cloud: String,
    pub database: String,
}

impl TargetPattern {
    /// True when `target` is covered by this pattern.
    pub fn matches(&self, target: &Target) -> bool {
        (self.cloud == "*" || self.cloud == target.cloud)
            && (self.database == "*" || self.database == target.database)
    }
}

/// The authenticated principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person with a session.
    User { id: Uuid, username: String },
    /// A service with an API key, limited to its allow-list of targets.
    ApiKey {
        id: Uuid,
        name: String,
        allowed_targets: Vec<TargetPattern>,
    },
}

/// A user's login session, as the session store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Hex SHA-256 of the token.
    pub id: String,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The caller of one request, as established by the authentication layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    /// The role in force for this call (as stored now: see the server's
    /// `auth::user_cache`).
    pub role: Role,
    /// The session this call came with (none for API keys).
    pub session: Option<Session>,
}

impl Identity {
    /// True when the caller may touch `target` at all: always for users,
    /// only inside the allow-list for API keys.
    pub fn may_access(&self, target: &Target) -> bool {
        match &self.principal {
            Principal::User { .. } => true,
            Principal::ApiKey { allowed_targets, .. } => allowed_targets.iter().any(|p| p.matches(target)),
        }
    }

    /// A short, secret-free label for logs and the audit trail
    /// (`user:alice`, `api_key:billing-sync`).
    pub fn label(&self) -> String {
        match &self.principal {
            Principal::User { username, .. } => format!("user:{username}"),
            Principal::ApiKey { name, .. } => format!("api_key:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Master > Role::User && Role::User > Role::Reader);
        for role in [Role::Reader, Role::User, Role::Master] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("master"), None, "stored names are exact");
    }

    #[test]
    fn api_keys_only_reach_their_allow_list() {
        let key = Identity {
            principal: Principal::ApiKey {
                id: Uuid::nil(),
                name: "sync".to_owned(),
                allowed_targets: vec![
                    TargetPattern {
                        cloud: "aws".to_owned(),
                        database: "*".to_owned(),
                    },
                    TargetPattern {
                        cloud: "*".to_owned(),
                        database: "analytics".to_owned(),
                    },
                ],
            },
            role: Role::Reader,
            session: None,
        };
        let cases = [
            ("aws", "app", true),
            ("aws", "analytics", true),
            ("gcp", "analytics", true),
            ("gcp", "app", false),
        ];
        for (cloud, database, allowed) in cases {
            assert_eq!(
                key.may_access(&Target::new(cloud, database)),
                allowed,
                "{cloud}/{database}"
            );
        }
    }
}
