//! Exponential backoff with jitter for connection acquisition.

use std::time::Duration;

use pgfleet_config::RetryConfig;
use rand::Rng;

/// True for failures worth another connection attempt: network errors,
/// pool timeouts, and the server saying it cannot take connections now.
/// Authentication failures and unknown databases are not transient.
pub fn is_transient(error: &sqlx::Error) -> bool {
    if tls_failure(error).is_some() {
        return false;
    }
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P03: cannot_connect_now (starting
            // up, in recovery); 53300: too_many_connections.
            code.starts_with("08") || code == "57P03" || code == "53300"
        }),
        _ => false,
    }
}

/// True when `error` says the server could not be used at all (no
/// connection, TLS, a login it refused, a database that is not there, a
/// server shutting down or not taking connections, a pool that gave up),
/// rather than that a statement failed on a working connection: for the
/// caller, the server is unavailable. Broader than [`is_transient`], which
/// says whether connecting again soon may help.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 28: invalid authorization (a wrong or
        // rotated password); 3D000: no such database; 53300: too many
        // connections; 57P01-03: shutting down, crashed, not accepting yet.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("28")
                || matches!(code.as_ref(), "3D000" | "53300" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Why the TLS handshake failed, when `error` is a TLS failure: sqlx's own
/// TLS errors (e.g. the server does not offer TLS), or a rustls error inside
/// the I/O error sqlx reports for the handshake (a certificate that does not
/// verify). None for every other failure.
pub fn tls_failure(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Tls(reason) => Some(reason.to_string()),
        sqlx::Error::Io(io) => {
            let rustls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
            Some(match rustls {
                rustls::Error::InvalidCertificate(_) => {
                    format!("{rustls} (check ssl_root_cert and that the host matches the certificate)")
                }
                other => other.to_string(),
            })
        }
        _ => None,
    }
}

/// The delays between attempts for one acquisition.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: RetryConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            config: config.clone(),
            attempt: 0,
        }
    }

    /// The wait before the next attempt, or none when the attempt budget is
    /// spent. Full jitter: uniform in [0, min(max, initial * 2^n)], so many
    /// clients retrying one recovering server do not arrive together.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.attempt += 1;
        if self.attempt >= self.config.max_attempts {
            return None;
        }
        let exponent = self.attempt.saturating_sub(1).min(20);
        let ceiling = self
            .config
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.config.max_backoff);
        let jittered = rand::rng().random_range(0.0..=1.0) * ceiling.as_secs_f64();
        Some(Duration::from_secs_f64(jittered))
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_max_attempts_and_stays_under_the_cap() {
        let config = RetryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            max_elapsed: Duration::from_secs(10),
        };
        let mut backoff = Backoff::new(&config);
        let delays: Vec<_> = std::iter::from_fn(|| backoff.next_delay()).collect();
        assert_eq!(delays.len(), 3, "4 attempts means 3 waits");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(250)),
            "{delays:?}"
        );
    }

    #[test]
    fn classifies_transient_errors() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
