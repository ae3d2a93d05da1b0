//! `oz egress-proxy`: the only way out of an isolated task network. An HTTP proxy (CONNECT for TLS,
//! absolute-form requests for plain HTTP) that lets through only the allowed domains, and refuses
//! any destination that resolves to a loopback, private, link-local (cloud metadata), shared or
//! otherwise non-public address, unless that range is explicitly allowed.
//!
//! Allow-list entries: `example.com` matches that name only; `.example.com` or `*.example.com` match
//! its subdomains (not the name itself).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An IP range (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let network: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: the prefix is longer than {max}"));
        }
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                (u32::from(n) & mask) == (u32::from(i) & mask)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                (u128::from(n) & mask) == (u128::from(i) & mask)
            }
            _ => false,
        }
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

/// What the proxy lets through.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Allowed domains (see the module docs for the syntax).
    pub domains: Vec<String>,
    /// Non-public ranges that are nonetheless allowed (an operator's own services).
    pub allowed_ranges: Vec<Cidr>,
}

impl Policy {
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
        is_public(ip) || self.allowed_ranges.iter().any(|r| r.contains(ip))
    }

    /// Resolves `host:port` and picks an allowed address, or says why not.
    pub async fn destination(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if host.parse::<IpAddr>().is_ok() {
            return Err(format!("{host}: addresses are not allowed, only domains on the allow-list"));
        }
        if !self.allows_host(host) {
            return Err(format!("{host} is not on the allow-list"));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("{host}: could not resolve: {e}"))?
            .collect();
        // Every address must be allowed: a name that also resolves to a private address is refused.
        if let Some(bad) = addrs.iter().find(|a| !self.allows_ip(a.ip())) {
            return Err(format!("{host} resolves to {}, which is not a public address", bad.ip()));
        }
        addrs.first().copied().ok_or_else(|| format!("{host}: no address"))
    }
}

/// Serves the proxy on `listen` until the process ends.
pub async fn serve(listen: &str, policy: Policy) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "oz egress-proxy: listening on {} for {} allowed domain(s)",
        listener.local_addr()?,
        policy.domains.len()
    );
    let policy = Arc::new(policy);
    loop {
        let (socket, peer) = listener.accept().await?;
        let policy = policy.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(socket, &policy).await {
                eprintln!("oz egress-proxy: {peer}: {e}");
            }
        });
    }
}

async fn refuse(stream: &mut TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("oz egress-proxy: {why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

async fn handle(socket: TcpStream, policy: &Policy) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket);
    let mut request_line = String::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut request_line))
        .await
        .map_err(|_| std::io::Error::other("no request within 30 s"))??;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if headers.len() > 100 {
            return Err(std::io::Error::other("too many headers"));
        }
        headers.push(line);
    }
    let mut parts = request_line.split_whitespace();
    let (method, target, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or("HTTP/1.1"));
    let (host, port, rest) = if method.eq_ignore_ascii_case("CONNECT") {
        let (h, p) = split_host_port(target, 443);
        (h, p, None)
    } else if let Some(after) = target.strip_prefix("http://") {
        let (authority, path) = after.split_once('/').map_or((after, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let (h, p) = split_host_port(authority, 80);
        (h, p, Some(path))
    } else {
        let stream = reader.get_mut();
        return refuse(stream, "400 Bad Request", "send CONNECT host:port or an absolute http:// URL").await;
    };
    let destination = match policy.destination(&host, port).await {
        Ok(d) => d,
        Err(why) => {
            eprintln!("oz egress-proxy: refused {method} {host}:{port}: {why}");
            return refuse(reader.get_mut(), "403 Forbidden", &why).await;
        }
    };
    let mut upstream = match tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(destination)).await {
        Ok(Ok(s)) => s,
        _ => return refuse(reader.get_mut(), "502 Bad Gateway", &format!("could not connect to {host}:{port}")).await,
    };
    eprintln!("oz egress-proxy: allowed {method} {host}:{port} ({destination})");
    match rest {
        None => reader.get_mut().write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?,
        Some(path) => {
            let mut head = format!("{method} {path} {version}\r\n");
            for h in headers.iter().filter(|h| !h.to_ascii_lowercase().starts_with("proxy-")) {
                head.push_str(h);
            }
            head.push_str("\r\n");
            upstream.write_all(head.as_bytes()).await?;
        }
    }
    // Bytes the reader already buffered belong to the tunnel.
    let buffered = reader.buffer().to_vec();
    if !buffered.is_empty() {
        upstream.write_all(&buffered).await?;
    }
    let mut client = reader.into_inner();
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

fn split_host_port(authority: &str, default: u16) -> (String, u16) {
    if let Some((h, p)) = authority.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        return (h.to_owned(), p.trim_start_matches(':').parse().unwrap_or(default));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
            (h.to_owned(), p.parse().unwrap_or(default))
        }
        _ => (authority.to_owned(), default),
    }
}

#[cfg(test)]
mod tests {
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
        let policy =
            Policy { domains: vec!["github.com".into(), "*.githubusercontent.com".into()], allowed_ranges: vec![] };
        assert!(policy.allows_host("github.com"));
        assert!(policy.allows_host("GitHub.com."));
        assert!(!policy.allows_host("api.github.com"));
        assert!(!policy.allows_host("evilgithub.com"));
        assert!(policy.allows_host("raw.githubusercontent.com"));
        assert!(!policy.allows_host("githubusercontent.com"));
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: Cidr = "172.30.0.0/16".parse().unwrap();
        assert!(r.contains("172.30.9.9".parse().unwrap()));
        assert!(!r.contains("172.31.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let policy = Policy { domains: vec![], allowed_ranges: vec![r] };
        assert!(policy.allows_ip("172.30.0.5".parse().unwrap()));
        assert!(!policy.allows_ip("169.254.169.254".parse().unwrap()));
    }

    #[tokio::test]
    async fn addresses_and_unlisted_names_are_refused_before_any_lookup() {
        let policy = Policy { domains: vec!["localhost".into()], allowed_ranges: vec![] };
        assert!(policy.destination("127.0.0.1", 80).await.unwrap_err().contains("not allowed"));
        assert!(policy.destination("example.org", 80).await.unwrap_err().contains("not on the allow-list"));
        // On the list, but it resolves to loopback.
        assert!(policy.destination("localhost", 80).await.unwrap_err().contains("not a public address"));
    }
}
