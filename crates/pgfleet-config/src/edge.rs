//! Settings of pgfleet's network edge that need types of their own: the
//! per-identity query rate limit, the shared limits on expensive calls
//! (`[rate_limits]`) and the trusted proxies' address ranges. (The scalar
//! transport limits sit directly in `ServerConfig`.)

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::lenient::{lenient_f64, lenient_opt_u32};

/// One token bucket: `burst` calls at once, refilled at `per_second`.
/// `[query.rate_limit]` (how often one identity, a user or an API key, may
/// call `Execute` / `ExecuteStream`) and each bucket of `[rate_limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained calls per second; fractions allowed (`0.5` = one every 2 s).
    #[serde(deserialize_with = "lenient_f64")]
    pub per_second: f64,
    /// Calls allowed back to back before the rate applies; `per_second`
    /// rounded up (at least 1) when unset.
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// The burst in force.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            // Saturating float-to-int cast; validation keeps per_second finite.
            (self.per_second.ceil() as u32).max(1)
        })
    }
}

/// `[rate_limits]`: limits on the RPCs that cost far more than a query
/// (each group below), per caller identity and per client address, kept
/// in Redis so every replica draws on the same buckets (in this process
/// when no `[redis]` is configured). A group left out is not limited.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpensiveCallLimits {
    /// What a call does while Redis cannot be asked.
    pub on_redis_error: OnRedisError,
    /// `ReplicationService/RunJob` and `ReplicateTable`: whole-table copies.
    pub replication: Option<CallerLimits>,
    /// `HistoryService/ExportExecutions`: the audit trail streamed out.
    pub export: Option<CallerLimits>,
    /// `FleetService/ListSchemas` and `ListTables`: live catalog reads on
    /// every target.
    pub introspection: Option<CallerLimits>,
}

impl ExpensiveCallLimits {
    /// True when at least one group is limited.
    pub fn any(&self) -> bool {
        [&self.replication, &self.export, &self.introspection]
            .iter()
            .any(|group| group.as_ref().is_some_and(CallerLimits::any))
    }
}

/// The buckets of one group of calls: one per caller identity (user or API
/// key) and one per client address (`edge::ClientAddress`: the TCP peer,
/// or the forwarded address behind a trusted proxy). A call takes a token
/// from both or is refused; either may be left out.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerLimits {
    pub per_identity: Option<RateLimitConfig>,
    pub per_address: Option<RateLimitConfig>,
}

impl CallerLimits {
    /// True when either bucket is set.
    pub fn any(&self) -> bool {
        self.per_identity.is_some() || self.per_address.is_some()
    }
}

/// `rate_limits.on_redis_error`: a limited call while Redis does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// The call is checked against this replica's in-process buckets
    /// instead (the same rates, no longer shared): still limited, and
    /// callers that do not need Redis (API keys) keep working.
    #[default]
    Open,
    /// The call is refused with UNAVAILABLE.
    Closed,
}

/// Reads `trusted_proxies`: CIDRs (`10.0.0.0/8`, `fd00::/8`) or bare
/// addresses (taken as /32 or /128), so `127.0.0.1` means what it says.
pub(crate) fn trusted_proxies<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let entries = Vec::<String>::deserialize(deserializer)?;
    entries
        .iter()
        .map(|entry| parse_network(entry).map_err(D::Error::custom))
        .collect()
}

fn parse_network(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if entry.contains('/') {
        entry
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| format!("{entry:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)"))
    } else {
        entry
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_from_cidrs_and_bare_addresses() {
        let cases = [
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("127.0.0.1", Some("127.0.0.1/32")),
            ("::1", Some("::1/128")),
            ("fd00::/8", Some("fd00::/8")),
            ("10.0.0.0/33", None),
            ("proxy.internal", None),
        ];
        for (input, want) in cases {
            let got = parse_network(input).ok().map(|net| net.to_string());
            assert_eq!(got.as_deref(), want, "case {input}");
        }
    }

    #[test]
    fn burst_defaults_to_the_rate_rounded_up() {
        let limit = |per_second, burst| RateLimitConfig { per_second, burst };
        assert_eq!(limit(5.0, None).effective_burst(), 5);
        assert_eq!(limit(0.5, None).effective_burst(), 1);
        assert_eq!(limit(2.5, None).effective_burst(), 3);
        assert_eq!(limit(5.0, Some(9)).effective_burst(), 9);
    }
}
