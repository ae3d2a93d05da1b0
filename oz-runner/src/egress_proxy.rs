//! `oz agent egress-proxy`: the only way out of an isolated task network. An HTTP proxy (CONNECT
//! for TLS, absolute-form requests for plain HTTP) enforcing an [`EgressPolicy`] (see
//! `oz_core::egress` for what it allows). Names are resolved with hickory's resolver from
//! `/etc/resolv.conf`, never with libc's `getaddrinfo` (the static sidecar has no NSS).
//!
//! Once it accepts connections it prints [`ProxyStatus::Ready`] as one JSON line on standard output;
//! its log goes to standard error.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use oz_core::egress::{EgressPolicy, EgressRefusal, ProxyStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Resolves names for the proxy.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

/// Why a destination could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The policy refuses it.
    #[error(transparent)]
    Refused(#[from] EgressRefusal),
    /// The name did not resolve.
    #[error("{host}: could not resolve: {source}")]
    Lookup {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: hickory_resolver::net::NetError,
    },
}

impl Resolver {
    /// The system's resolver configuration (`/etc/resolv.conf`, `/etc/hosts`).
    pub fn from_system() -> std::io::Result<Self> {
        let inner = TokioResolver::builder_tokio().and_then(|b| b.build()).map_err(std::io::Error::other)?;
        Ok(Self { inner })
    }

    /// Asks only the DNS server at `server` (over UDP).
    pub fn with_name_server(server: SocketAddr) -> std::io::Result<Self> {
        let mut connection = ConnectionConfig::udp();
        connection.port = server.port();
        let config =
            ResolverConfig::from_name_servers(vec![NameServerConfig::new(server.ip(), true, vec![connection])]);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self { inner })
    }

    /// Checks `host` against `policy`, resolves it, and picks an allowed address, or says why not.
    pub async fn destination(
        &self,
        policy: &EgressPolicy,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, DestinationError> {
        policy.check_host(host)?;
        let lookup = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|source| DestinationError::Lookup { host: host.to_owned(), source })?;
        let addresses: Vec<IpAddr> = lookup.iter().collect();
        let ip = policy.check_addresses(host, &addresses)?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// A bound proxy, not yet serving.
#[derive(Debug)]
pub struct EgressProxy {
    listener: TcpListener,
    policy: Arc<EgressPolicy>,
    resolver: Resolver,
}

impl EgressProxy {
    /// Binds `listen`.
    pub async fn bind(listen: SocketAddr, policy: EgressPolicy, resolver: Resolver) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        Ok(Self { listener, policy: Arc::new(policy), resolver })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub async fn run(self) -> std::io::Result<()> {
        loop {
            let (socket, peer) = self.listener.accept().await?;
            let policy = self.policy.clone();
            let resolver = self.resolver.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(socket, &policy, &resolver).await {
                    eprintln!("oz egress-proxy: {peer}: {e}");
                }
            });
        }
    }
}

/// Serves the proxy on `listen` with the system's resolver configuration until the process ends,
/// printing [`ProxyStatus::Ready`] on standard output once it accepts connections.
pub async fn serve(listen: SocketAddr, policy: EgressPolicy) -> std::io::Result<()> {
    let domains = policy.domains.len();
    let proxy = EgressProxy::bind(listen, policy, Resolver::from_system()?).await?;
    let ready = ProxyStatus::Ready { listen: proxy.local_addr()?, domains };
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", ready.to_line())?;
        stdout.flush()?;
    }
    eprintln!("oz egress-proxy: serving {domains} allowed domain(s) on {}", proxy.local_addr()?);
    proxy.run().await
}

async fn refuse(stream: &mut TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("oz egress-proxy: {why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

async fn handle(socket: TcpStream, policy: &EgressPolicy, resolver: &Resolver) -> std::io::Result<()> {
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
    let destination = match resolver.destination(policy, &host, port).await {
        Ok(d) => d,
        Err(why) => {
            eprintln!("oz egress-proxy: refused {method} {host}:{port}: {why}");
            return refuse(reader.get_mut(), "403 Forbidden", &why.to_string()).await;
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_listed_name_that_resolves_to_loopback_is_refused() {
        let policy = EgressPolicy { domains: vec!["localhost".into()], allowed_ranges: vec![] };
        let resolver = Resolver::from_system().unwrap();
        let e = resolver.destination(&policy, "localhost", 80).await.unwrap_err().to_string();
        assert!(e.contains("not a public address"), "{e}");
        let e = resolver.destination(&policy, "127.0.0.1", 80).await.unwrap_err().to_string();
        assert!(e.contains("not allowed"), "{e}");
    }

    /// Answers every A query with `answer` (a minimal DNS server: header, the question echoed, one
    /// answer pointing at it).
    async fn fake_dns(answer: std::net::Ipv4Addr) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                let query = &buf[..n];
                // The question ends after its name's zero byte, then type and class.
                let Some(name_end) = query[12..].iter().position(|b| *b == 0).map(|p| 12 + p + 1) else { continue };
                let question_end = name_end + 4;
                let qtype = u16::from_be_bytes([query[name_end], query[name_end + 1]]);
                let mut reply = Vec::from(&query[..question_end]);
                reply[2] = 0x81; // response, recursion desired
                reply[3] = 0x80; // recursion available, no error
                reply[6..8].copy_from_slice(&(u16::from(qtype == 1)).to_be_bytes()); // answers
                reply[8..12].fill(0);
                if qtype == 1 {
                    reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    reply.extend_from_slice(&answer.octets());
                }
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        addr
    }

    /// The proxy resolves names with its own resolver: a name only the test's DNS server knows
    /// (libc's `getaddrinfo` would not find it) reaches the server the test made behind it.
    #[tokio::test]
    async fn names_resolve_through_the_proxys_own_resolver_not_libc() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.unwrap();
            let mut reader = BufReader::new(&mut socket);
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await.unwrap();
        });
        let dns = fake_dns(std::net::Ipv4Addr::LOCALHOST).await;
        let policy = EgressPolicy {
            domains: vec!["only-our-dns.test".into()],
            allowed_ranges: vec!["127.0.0.0/8".parse().unwrap()],
        };
        let proxy =
            EgressProxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), policy, Resolver::with_name_server(dns).unwrap())
                .await
                .unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        tokio::spawn(proxy.run());
        let mut client = TcpStream::connect(proxy_addr).await.unwrap();
        let request =
            format!("GET http://only-our-dns.test:{upstream_port}/ HTTP/1.1\r\nHost: only-our-dns.test\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("hello"), "{response}");
        assert!(tokio::net::lookup_host(("only-our-dns.test", 80)).await.is_err(), "libc must not know the name");
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_host_port("example.com:8443", 443), ("example.com".to_owned(), 8443));
        assert_eq!(split_host_port("example.com", 80), ("example.com".to_owned(), 80));
        assert_eq!(split_host_port("[::1]:81", 80), ("::1".to_owned(), 81));
    }
}
