//! Users as the auth gate last read them, per replica, valid while the
//! session store's users version is unchanged.
//!
//! Every authenticated call needs the caller's role and whether the account
//! is active, as stored now: a role change or a deactivation made through
//! any replica must apply to the very next call on every replica. Reading
//! the user from the history store on each call costs a round trip there;
//! instead the session lookup (one Redis round trip it makes anyway) also
//! reads the users version ([`UsersVersion`]), which every change of a role
//! or standing replaces after it commits ([`super::Authenticator::set_role`],
//! [`super::Authenticator::set_active`]). A user read after a version was
//! seen serves calls that see the same version, for at most `ttl` (a
//! backstop for a change made outside pgfleet, such as an `UPDATE` of
//! `pgfleet.users` by hand).
//!
//! Why this is never stale: a change commits, then replaces the version; a
//! call reads the version, then (on a miss) the user. So a user cached under
//! version `v` was read after every change whose replacement of the version
//! came before `v` was read, and any later change replaces `v` before its
//! caller returns. While a change is under way the version says so
//! ([`UsersVersion::Changing`], with an expiry in case the replica making it
//! dies) and nothing is served from or added to the cache; if replacing the
//! version fails after a commit, that marker stays until it expires, so
//! calls keep reading the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use pgfleet_engine::identity::Role;

/// The users version read with a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersVersion {
    /// No change under way; the value changes with every change.
    Current(String),
    /// A change is under way (or its end was not recorded): read the store.
    Changing,
}

/// What the gate needs of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedUser {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
}

/// The cache of one replica. Only active users are kept: an inactive one is
/// refused (and its session ended) on every call.
pub struct UserCache {
    ttl: Duration,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// The version the entries were read under.
    version: String,
    users: HashMap<Uuid, (Instant, CachedUser)>,
}

impl UserCache {
    /// A cache whose entries live at most `ttl`; zero turns it off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // Entries are replaced whole: a panic elsewhere cannot leave one
        // half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The active user `id` as read under `version`, if still fresh.
    pub fn get(&self, id: Uuid, version: &UsersVersion) -> Option<CachedUser> {
        let UsersVersion::Current(version) = version else {
            return None;
        };
        if self.ttl.is_zero() {
            return None;
        }
        let mut state = self.lock();
        if state.version != *version {
            // Everything read under another version is of no further use.
            state.version.clone_from(version);
            state.users.clear();
            return None;
        }
        match state.users.get(&id) {
            Some((read_at, user)) if read_at.elapsed() < self.ttl => Some(user.clone()),
            _ => None,
        }
    }

    /// Keeps `user`, read from the store after `version` was read, unless
    /// the version moved on in the meantime (another call saw a newer one)
    /// or a change is under way.
    pub fn put(&self, version: &UsersVersion, user: CachedUser, read_at: Instant) {
        let UsersVersion::Current(version) = version else {
            return;
        };
        if self.ttl.is_zero() {
            return;
        }
        let mut state = self.lock();
        if state.version == *version {
            state.users.insert(user.id, (read_at, user));
        }
    }

    /// Forgets every user (this replica made a change).
    pub fn clear(&self) {
        self.lock().users.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> CachedUser {
        CachedUser {
            id: Uuid::from_u128(7),
            username: "alice".to_owned(),
            role,
        }
    }

    fn current(value: &str) -> UsersVersion {
        UsersVersion::Current(value.to_owned())
    }

    #[test]
    fn serves_a_user_only_under_the_version_it_was_read_under() {
        let cache = UserCache::new(Duration::from_secs(60));
        let id = Uuid::from_u128(7);
        assert_eq!(cache.get(id, &current("a")), None);
        cache.put(&current("a"), user(Role::Master), Instant::now());
        assert_eq!(cache.get(id, &current("a")), Some(user(Role::Master)));
        // A change replaced the version: the entry is gone for good, even
        // if an older version is seen again later.
        assert_eq!(cache.get(id, &current("b")), None);
        assert_eq!(cache.get(id, &current("a")), None);
    }

    #[test]
    fn a_read_under_an_older_version_is_not_kept() {
        let cache = UserCache::new(Duration::from_secs(60));
        let id = Uuid::from_u128(7);
        // A call saw "b" first; one that read "a" before it finishes later.
        assert_eq!(cache.get(id, &current("b")), None);
        cache.put(&current("a"), user(Role::Master), Instant::now());
        assert_eq!(cache.get(id, &current("b")), None);
    }

    #[test]
    fn nothing_is_served_or_kept_while_a_change_is_under_way() {
        let cache = UserCache::new(Duration::from_secs(60));
        let id = Uuid::from_u128(7);
        cache.put(&UsersVersion::Changing, user(Role::Reader), Instant::now());
        assert_eq!(cache.get(id, &current("")), None);
        cache.put(&current(""), user(Role::Reader), Instant::now());
        assert_eq!(cache.get(id, &UsersVersion::Changing), None);
        assert_eq!(cache.get(id, &current("")), Some(user(Role::Reader)));
    }

    #[test]
    fn entries_expire_after_the_ttl_and_a_zero_ttl_keeps_nothing() {
        let cache = UserCache::new(Duration::from_secs(60));
        let id = Uuid::from_u128(7);
        assert_eq!(cache.get(id, &current("a")), None);
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(61))
            .expect("the clock is past one minute");
        cache.put(&current("a"), user(Role::User), long_ago);
        assert_eq!(cache.get(id, &current("a")), None);

        let off = UserCache::new(Duration::ZERO);
        assert_eq!(off.get(id, &current("a")), None);
        off.put(&current("a"), user(Role::User), Instant::now());
        assert_eq!(off.get(id, &current("a")), None);
    }

    #[test]
    fn clear_forgets_every_user() {
        let cache = UserCache::new(Duration::from_secs(60));
        let id = Uuid::from_u128(7);
        assert_eq!(cache.get(id, &current("a")), None);
        cache.put(&current("a"), user(Role::User), Instant::now());
        cache.clear();
        assert_eq!(cache.get(id, &current("a")), None);
    }
}
