//! Login throttling that slows guessing without locking anyone out.
//!
//! Three counters, all in the session store (shared by replicas with Redis):
//!
//! - per (username, client address): after `auth.login_failures_before_backoff`
//!   failures the pair must wait `login_backoff_initial`, doubling with each
//!   further failure up to `login_backoff_max`; a success starts it over.
//!   Only the address that guessed waits: the owner elsewhere is never
//!   refused.
//! - per client address (any username): `login_attempts_per_address`
//!   failures per `login_window`, against spraying many usernames.
//! - per username (any address): past `login_username_slowdown_after`
//!   failures in the window it is guessing from many addresses. That is
//!   reported (a metric and a warning) and every login of the username waits
//!   `login_username_delay` before its password is checked, but is never
//!   refused, since refusing would let the guesser lock the owner out.
//!
//! IPv6 clients are counted per /64: one host usually holds a whole /64,
//! and per-address counters would otherwise give it 2^64 fresh starts.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::Ipv6Net;
use pgfleet_config::AuthConfig;
use sha2::{Digest as _, Sha256};

use super::AuthError;
use super::sessions::{LoginAdmission, LoginKeys, LoginLimits, SessionStore};

/// The login throttling rules of one server.
#[derive(Debug, Clone, Copy)]
pub struct LoginThrottle {
    limits: LoginLimits,
    slowdown_after: u64,
    slowdown: Duration,
}

/// An attempt the throttle let through; it counts as a failure until
/// [`LoginThrottle::succeeded`] is called with it.
#[derive(Debug)]
#[must_use = "a successful attempt must be reported with LoginThrottle::succeeded"]
pub struct AdmittedAttempt {
    keys: LoginKeys,
    /// How long to wait before checking the password (username under
    /// guessing), zero otherwise.
    pub slowdown: Duration,
    /// This attempt is the one that took its username past the guessing
    /// threshold in the current window (reported once per window).
    pub guessing_detected: bool,
    /// Failures of the username from all addresses in the window.
    pub username_failures: u64,
}

impl LoginThrottle {
    pub fn new(settings: &AuthConfig) -> Self {
        Self {
            limits: LoginLimits {
                window: settings.login_window,
                per_address: settings.login_attempts_per_address,
                failures_before_backoff: settings.login_failures_before_backoff,
                backoff_initial: settings.login_backoff_initial,
                backoff_max: settings.login_backoff_max,
            },
            slowdown_after: u64::from(settings.login_username_slowdown_after),
            slowdown: settings.login_username_delay,
        }
    }

    /// Decides one password attempt for `username` (normalized; empty for
    /// a malformed one) from `address`: RESOURCE_EXHAUSTED with the wait, or
    /// an admitted attempt already counted as a failure.
    pub async fn admit(
        &self,
        store: &SessionStore,
        username: &str,
        address: Option<IpAddr>,
    ) -> Result<AdmittedAttempt, AuthError> {
        let keys = login_keys(username, address);
        match store.admit_login(&keys, &self.limits).await? {
            LoginAdmission::Backoff { retry_after } => Err(AuthError::RateLimited {
                scope: "username from this address",
                retry_after,
            }),
            LoginAdmission::AddressLimited { retry_after } => Err(AuthError::RateLimited {
                scope: "address",
                retry_after,
            }),
            LoginAdmission::Admitted {
                username_failures, ..
            } => {
                let under_guessing = username_failures > self.slowdown_after;
                Ok(AdmittedAttempt {
                    keys,
                    slowdown: if under_guessing {
                        self.slowdown
                    } else {
                        Duration::ZERO
                    },
                    guessing_detected: username_failures == self.slowdown_after + 1,
                    username_failures,
                })
            }
        }
    }

    /// The admitted attempt had the right password.
    pub async fn succeeded(&self, store: &SessionStore, attempt: AdmittedAttempt) -> Result<(), AuthError> {
        Ok(store.login_succeeded(&attempt.keys).await?)
    }
}

/// The counters of `username` from `address`. The username is hashed: what
/// a caller typed there may be a password, and must not sit in Redis.
fn login_keys(username: &str, address: Option<IpAddr>) -> LoginKeys {
    let address = address_scope(address);
    let username: String = Sha256::digest(username.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    LoginKeys {
        pair: format!("{username}|{address}"),
        address,
        username,
    }
}

/// What one "address" is for counting: an IPv4 address, an IPv6 /64.
fn address_scope(address: Option<IpAddr>) -> String {
    match address.map(|ip| ip.to_canonical()) {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(ip)) => ip.to_string(),
        Some(IpAddr::V6(ip)) => Ipv6Net::new(ip, 64)
            .map(|net| net.trunc().to_string())
            .unwrap_or_else(|_| ip.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_per_ipv4_address_and_per_ipv6_64() {
        for (address, scope) in [
            (Some("198.51.100.7"), "198.51.100.7"),
            (Some("::ffff:198.51.100.7"), "198.51.100.7"),
            (Some("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64"),
            (Some("2001:db8:1:2::1"), "2001:db8:1:2::/64"),
            (Some("2001:db8:1:3::1"), "2001:db8:1:3::/64"),
            (None, "unknown"),
        ] {
            let ip = address.map(|text| text.parse::<IpAddr>().expect("address"));
            assert_eq!(address_scope(ip), scope, "{address:?}");
        }
    }

    #[tokio::test]
    async fn guessing_is_reported_once_and_slows_down_without_refusing() -> anyhow::Result<()> {
        let settings = AuthConfig {
            login_username_slowdown_after: 3,
            login_username_delay: Duration::from_millis(250),
            ..AuthConfig::default()
        };
        let throttle = LoginThrottle::new(&settings);
        let store = SessionStore::memory();
        let mut seen = Vec::new();
        // One failure from each of six addresses: no pair and no address
        // reaches a limit, the username does.
        for host in 1..=6 {
            let address: IpAddr = format!("192.0.2.{host}").parse()?;
            let attempt = throttle.admit(&store, "admin", Some(address)).await?;
            seen.push((
                attempt.username_failures,
                attempt.guessing_detected,
                attempt.slowdown,
            ));
        }
        let slow = Duration::from_millis(250);
        assert_eq!(
            seen,
            [
                (1, false, Duration::ZERO),
                (2, false, Duration::ZERO),
                (3, false, Duration::ZERO),
                (4, true, slow),
                (5, false, slow),
                (6, false, slow),
            ]
        );
        Ok(())
    }
}
