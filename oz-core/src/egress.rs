//! The egress policy of an isolated task network, pure: which destinations the egress proxy lets
//! through, the proxy's command line, and the readiness line it prints. The proxy itself (sockets,
//! DNS) is `oz-runner`'s; the Docker backend builds its command line and waits for its readiness
//! from these same types.
//!
//! Allow-list entries: `example.com` matches that name only; `.example.com` or `*.example.com` match
//! its subdomains (not the name itself). Destinations are refused when they are IP literals, when
//! their name is not listed, or when any address the name resolves to is loopback, private,
//! link-local (cloud metadata), shared or otherwise non-public, unless an allowed range covers it.

use std::net::{IpAddr, SocketAddr};

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What the proxy lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Allowed domains (see the module docs for the syntax).
    pub domains: Vec<String>,
    /// Non-public ranges that are nonetheless allowed (an operator's own services).
    pub allowed_ranges: Vec<IpNet>,
}

/// Why a destination is refused; the message is what the client of the proxy reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressRefusal {
    /// The client asked for an IP address instead of a name.
    #[error("{host}: addresses are not allowed, only domains on the allow-list")]
    AddressLiteral {
        /// What was asked for.
        host: String,
    },
    /// The name is not on the allow-list.
    #[error("{host} is not on the allow-list")]
    NotListed {
        /// What was asked for.
        host: String,
    },
    /// The name resolves to an address that is neither public nor in an allowed range.
    #[error("{host} resolves to {address}, which is not a public address")]
    NotPublic {
        /// What was asked for.
        host: String,
        /// The offending address.
        address: IpAddr,
    },
    /// The name resolved to nothing.
    #[error("{host}: no address")]
    NoAddress {
        /// What was asked for.
        host: String,
    },
}

impl EgressPolicy {
    /// Whether `host` is on the allow-list.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.domains.iter().any(|entry| {
            let entry = entry.trim_end_matches('.').to_ascii_lowercase();
            match entry.strip_prefix("*.").or_else(|| entry.strip_prefix('.')) {
                Some(parent) => host.ends_with(&format!(".{parent}")),
                None => host == entry,
            }
        })
    }

    /// Whether connecting to `ip` is allowed.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed_ranges.iter().any(|r| r.contains(&ip))
    }

    /// The check before any lookup: a listed name, not an address.
    pub fn check_host(&self, host: &str) -> Result<(), EgressRefusal> {
        if host.parse::<IpAddr>().is_ok() {
            return Err(EgressRefusal::AddressLiteral { host: host.to_owned() });
        }
        if !self.allows_host(host) {
            return Err(EgressRefusal::NotListed { host: host.to_owned() });
        }
        Ok(())
    }

    /// The check after the lookup: every address must be allowed (a name that also resolves to a
    /// private address is refused); returns the address to connect to.
    pub fn check_addresses(&self, host: &str, addresses: &[IpAddr]) -> Result<IpAddr, EgressRefusal> {
        if let Some(bad) = addresses.iter().find(|a| !self.allows_ip(**a)) {
            return Err(EgressRefusal::NotPublic { host: host.to_owned(), address: *bad });
        }
        addresses.first().copied().ok_or_else(|| EgressRefusal::NoAddress { host: host.to_owned() })
    }

    /// The arguments of `oz` that serve this policy on `listen`: `agent egress-proxy --listen ADDR
    /// [--allow DOMAIN]... [--allow-range CIDR]...`.
    pub fn proxy_argv(&self, listen: SocketAddr) -> Vec<String> {
        let long = |name: &str| format!("--{name}");
        let mut argv: Vec<String> = PROXY_SUBCOMMAND.iter().map(|s| (*s).to_owned()).collect();
        argv.extend([long(proxy_flag::LISTEN), listen.to_string()]);
        for domain in &self.domains {
            argv.extend([long(proxy_flag::ALLOW), domain.clone()]);
        }
        for range in &self.allowed_ranges {
            argv.extend([long(proxy_flag::ALLOW_RANGE), range.to_string()]);
        }
        argv
    }
}

/// The `oz` subcommand that runs the proxy.
pub const PROXY_SUBCOMMAND: [&str; 2] = ["agent", "egress-proxy"];

/// The port the proxy listens on by default.
pub const PROXY_PORT: u16 = 3128;

/// The proxy's long flags (without the leading `--`), as [`EgressPolicy::proxy_argv`] writes them.
pub mod proxy_flag {
    /// `--listen ADDR`.
    pub const LISTEN: &str = "listen";
    /// `--allow DOMAIN`, repeatable.
    pub const ALLOW: &str = "allow";
    /// `--allow-range CIDR`, repeatable.
    pub const ALLOW_RANGE: &str = "allow-range";
}

/// What the proxy says on its standard output, one JSON object per line, for the program that
/// started it (the Docker backend waits for [`ProxyStatus::Ready`] before starting the task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "egress_proxy", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProxyStatus {
    /// It accepts connections.
    Ready {
        /// Where it listens.
        listen: SocketAddr,
        /// How many domains it allows.
        domains: usize,
    },
}

impl ProxyStatus {
    /// The line to print (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A status from one line of the proxy's output; `None` for any other line.
    pub fn from_line(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// Whether an address is publicly routable (not loopback, private, link-local, shared, multicast,
/// documentation, unspecified; IPv4-mapped IPv6 is judged as IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_allow_list_matches_names_and_subdomains_as_written() {
        let policy = EgressPolicy {
            domains: vec!["github.com".into(), "*.githubusercontent.com".into()],
            allowed_ranges: vec![],
        };
        assert!(policy.allows_host("github.com"));
        assert!(policy.allows_host("GitHub.com."));
        assert!(!policy.allows_host("api.github.com"));
        assert!(!policy.allows_host("evilgithub.com"));
        assert!(policy.allows_host("raw.githubusercontent.com"));
        assert!(!policy.allows_host("githubusercontent.com"));
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: IpNet = "172.30.0.0/16".parse().unwrap();
        assert!(r.contains(&"172.30.9.9".parse::<IpAddr>().unwrap()));
        assert!(!r.contains(&"172.31.0.1".parse::<IpAddr>().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        let policy = EgressPolicy { domains: vec![], allowed_ranges: vec![r] };
        assert!(policy.allows_ip("172.30.0.5".parse().unwrap()));
        assert!(!policy.allows_ip("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn addresses_and_unlisted_names_are_refused_before_any_lookup() {
        let policy = EgressPolicy { domains: vec!["localhost".into()], allowed_ranges: vec![] };
        assert!(policy.check_host("127.0.0.1").unwrap_err().to_string().contains("not allowed"));
        assert!(policy.check_host("example.org").unwrap_err().to_string().contains("not on the allow-list"));
        assert!(policy.check_host("localhost").is_ok());
        let loopback = ["127.0.0.1".parse().unwrap()];
        assert!(
            policy.check_addresses("localhost", &loopback).unwrap_err().to_string().contains("not a public address")
        );
        let mixed = ["1.1.1.1".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert!(policy.check_addresses("localhost", &mixed).is_err(), "one private address refuses the name");
        assert!(policy.check_addresses("localhost", &[]).is_err());
    }

    #[test]
    fn the_readiness_line_round_trips_and_other_lines_are_not_statuses() {
        let ready = ProxyStatus::Ready { listen: "0.0.0.0:3128".parse().unwrap(), domains: 2 };
        let line = ready.to_line();
        assert_eq!(line, r#"{"egress_proxy":"ready","listen":"0.0.0.0:3128","domains":2}"#);
        assert_eq!(ProxyStatus::from_line(&format!("{line}\r\n")), Some(ready));
        assert_eq!(ProxyStatus::from_line("oz egress-proxy: listening on 0.0.0.0:3128"), None);
    }

    #[test]
    fn the_proxy_argv_carries_the_policy() {
        let policy =
            EgressPolicy { domains: vec!["github.com".into()], allowed_ranges: vec!["10.20.0.0/16".parse().unwrap()] };
        assert_eq!(
            policy.proxy_argv("0.0.0.0:3128".parse().unwrap()),
            [
                "agent",
                "egress-proxy",
                "--listen",
                "0.0.0.0:3128",
                "--allow",
                "github.com",
                "--allow-range",
                "10.20.0.0/16"
            ]
        );
    }
}
