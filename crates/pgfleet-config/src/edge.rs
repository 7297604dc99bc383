//! Settings of pgfleet's network edge that need types of their own: the
//! per-identity query rate limit and the trusted proxies' address ranges.
//! (The scalar transport limits sit directly in `ServerConfig`.)

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::lenient::{lenient_f64, lenient_opt_u32};

/// `[query.rate_limit]`: how often one identity (a user, or an API key) may
/// call `Execute` / `ExecuteStream`. A token bucket: `burst` calls at once,
/// refilled at `per_second`.
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
