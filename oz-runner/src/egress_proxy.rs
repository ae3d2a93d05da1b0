//! `oz agent egress-proxy`: the only way out of an isolated task network. An HTTP proxy (CONNECT
//! for TLS, absolute-form requests for plain HTTP) enforcing an [`EgressPolicy`] (see
//! `oz_core::egress` for what it allows). Names are resolved with hickory's resolver from
//! `/etc/resolv.conf`, never with libc's `getaddrinfo` (the static sidecar has no NSS).
//!
//! The name checked is the one the client really talks to, not only the one it connects to: a plain
//! request's `Host` header must name its URL's host and port, and the proxy forwards that one request
//! (`Connection: close`, nothing the client sends after its body); a CONNECT tunnel must start with a
//! TLS ClientHello whose server name (SNI) is the CONNECT host. Anything else over a tunnel (plain
//! HTTP, SSH, TLS without SNI, Encrypted Client Hello whose outer name differs) is refused by closing
//! it, since its real destination could not be checked. What TLS then carries (an HTTP `Host` inside
//! it) is out of the proxy's sight. See [`TrafficRefusal`].
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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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

/// The longest request line, header line or chunk-size line read.
const MAX_LINE: u64 = 8 * 1024;
/// The most header lines a request may have.
const MAX_HEADERS: usize = 100;
/// The most bytes read while waiting for a tunnel's TLS ClientHello (rustls itself refuses handshake
/// messages over 64 KiB).
const MAX_CLIENT_HELLO: usize = 66 * 1024;
/// How long a client has to send its request head, and a tunnel's ClientHello.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy refused what a client sent for a destination the policy allows: the name the client
/// is really talking to (its HTTP `Host`, its TLS server name) must be that destination. Without
/// these checks a client could connect to an allowed name and reach another site behind the same
/// addresses (a CDN, a shared load balancer) by naming it in the `Host` header or the SNI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficRefusal {
    /// A plain request's `Host` header names another host (or port) than its absolute URL.
    #[error("the Host header {header:?} does not match the request's target {target}")]
    HostMismatch {
        /// The header's value.
        header: String,
        /// The URL's `host:port`.
        target: String,
    },
    /// A plain request has several `Host` headers.
    #[error("more than one Host header")]
    DuplicateHost,
    /// A plain request the proxy will not forward as it is (framing it cannot pass on unambiguously).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A tunnel's first bytes are not a TLS ClientHello. Tunnels carry TLS only: any other protocol
    /// would name its real destination where the proxy cannot check it.
    #[error("the tunnel to {host} does not start with a TLS ClientHello")]
    NotTls {
        /// The tunnel's destination.
        host: String,
        /// What rustls made of the bytes.
        #[source]
        source: rustls::Error,
    },
    /// A tunnel's first bytes could not be read as TLS (a record too large, or not TLS at all).
    #[error("the tunnel to {host} does not start with a readable TLS ClientHello")]
    UnreadableHello {
        /// The tunnel's destination.
        host: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The client closed the tunnel, or sent nothing, before a whole ClientHello.
    #[error("the tunnel to {host} ended or timed out before a TLS ClientHello")]
    NoHello {
        /// The tunnel's destination.
        host: String,
    },
    /// The ClientHello names no server (no SNI, or an address).
    #[error("the TLS ClientHello for {host} names no server (SNI)")]
    NoServerName {
        /// The tunnel's destination.
        host: String,
    },
    /// The ClientHello names another server than the tunnel's destination.
    #[error("the TLS server name {server_name:?} is not {host}, the tunnel's destination")]
    ServerNameMismatch {
        /// The tunnel's destination.
        host: String,
        /// The SNI.
        server_name: String,
    },
}

async fn refuse(stream: &mut OwnedWriteHalf, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("oz egress-proxy: {why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

/// One line, `\n` included, of at most `max` bytes; empty at the end of the stream.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(reader: &mut R, max: u64) -> std::io::Result<String> {
    let mut line = String::new();
    (&mut *reader).take(max).read_line(&mut line).await?;
    if !line.is_empty() && !line.ends_with('\n') {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a line too long, or cut short"));
    }
    Ok(line)
}

/// The request line and header lines, ends of line included.
async fn read_head(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<(String, Vec<String>)> {
    let request_line = read_line_bounded(reader, MAX_LINE).await?;
    let mut headers = Vec::new();
    loop {
        let line = read_line_bounded(reader, MAX_LINE).await?;
        if line.is_empty() || line == "\r\n" || line == "\n" {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(std::io::Error::other("too many headers"));
        }
        headers.push(line);
    }
    Ok((request_line, headers))
}

/// How a plain request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A plain request as it goes upstream.
#[derive(Debug, PartialEq, Eq)]
struct PlainRequest {
    /// The head (origin-form target, the checked `Host`, `Connection: close`, blank line).
    head: String,
    body: Body,
}

/// Lowercase, without a trailing dot: how names are compared.
fn normalized(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a plain (absolute-form) request for `host:port` and rewrites its head for upstream: the
/// `Host` header must name `host` (and `port`, if it gives one; one is added when absent); hop-by-hop and `Proxy-*` headers
/// are dropped and `Connection: close` is set, so upstream answers this one request only; the body's
/// framing is kept only when unambiguous (one `Content-Length`, or `chunked` alone on HTTP/1.1).
fn plain_request(
    method: &str,
    path: &str,
    version: &str,
    headers: &[String],
    host: &str,
    port: u16,
) -> Result<PlainRequest, TrafficRefusal> {
    if !is_token(method) {
        return Err(TrafficRefusal::Malformed("the method is not a token"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(TrafficRefusal::Malformed("only HTTP/1.0 and HTTP/1.1 requests are forwarded"));
    }
    let mut host_header = None;
    let mut lengths = Vec::new();
    let mut encodings = Vec::new();
    let mut kept = String::new();
    for line in headers {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains(['\r', '\n', '\0']) {
            return Err(TrafficRefusal::Malformed("a header holds a bare CR or NUL"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(TrafficRefusal::Malformed("a header line without a colon"));
        };
        if !is_token(name) {
            // Also refuses folded (obsolete multi-line) headers, which start with a space.
            return Err(TrafficRefusal::Malformed("a header name is not a token"));
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "host" => {
                if host_header.replace(value).is_some() {
                    return Err(TrafficRefusal::DuplicateHost);
                }
            }
            "content-length" => lengths.push(value),
            "transfer-encoding" => encodings.push(value),
            "connection" | "keep-alive" | "upgrade" | "te" | "trailer" => {}
            lower if lower.starts_with("proxy-") => {}
            _ => {
                kept.push_str(line);
                kept.push_str("\r\n");
            }
        }
    }
    let target = if port == 80 { host.to_owned() } else { format!("{host}:{port}") };
    if let Some(header) = host_header {
        // A Host without a port is taken as the URL's (clients differ); the name is what a shared
        // server routes by, and upstream gets the URL's `host:port` either way.
        let (h, p) = split_host_port(header, port);
        if normalized(&h) != normalized(host) || p != port {
            return Err(TrafficRefusal::HostMismatch {
                header: header.chars().take(256).collect(),
                target: format!("{host}:{port}"),
            });
        }
    }
    let body = match (&lengths[..], &encodings[..]) {
        ([], []) => Body::None,
        (lengths, []) => {
            let first = lengths[0];
            if lengths.iter().any(|l| *l != first) {
                return Err(TrafficRefusal::Malformed("differing Content-Length headers"));
            }
            match first.parse::<u64>() {
                Ok(n) if first.bytes().all(|b| b.is_ascii_digit()) => Body::Length(n),
                _ => return Err(TrafficRefusal::Malformed("a Content-Length that is not a number")),
            }
        }
        ([], [encoding]) if encoding.eq_ignore_ascii_case("chunked") && version == "HTTP/1.1" => Body::Chunked,
        ([], _) => return Err(TrafficRefusal::Malformed("a Transfer-Encoding other than chunked")),
        _ => return Err(TrafficRefusal::Malformed("both Content-Length and Transfer-Encoding")),
    };
    let framing = match body {
        Body::None => String::new(),
        Body::Length(n) => format!("Content-Length: {n}\r\n"),
        Body::Chunked => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    let head = format!("{method} {path} {version}\r\nHost: {target}\r\n{kept}{framing}Connection: close\r\n\r\n");
    Ok(PlainRequest { head, body })
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Copies exactly `n` bytes.
async fn copy_exact<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    upstream: &mut W,
    n: u64,
) -> std::io::Result<()> {
    let copied = tokio::io::copy_buf(&mut (&mut *reader).take(n), upstream).await?;
    if copied < n {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the request body was cut short"));
    }
    Ok(())
}

/// Copies a request's body, and nothing after it: bytes a client sends past its request (another
/// request on a kept-alive connection) never reach upstream. A chunked body is re-encoded from what
/// was parsed (sizes without extensions, no trailers), so upstream reads the same body the proxy did.
async fn relay_body<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    upstream: &mut W,
    body: Body,
) -> std::io::Result<()> {
    match body {
        Body::None => Ok(()),
        Body::Length(n) => copy_exact(reader, upstream, n).await,
        Body::Chunked => loop {
            let line = read_line_bounded(reader, MAX_LINE).await?;
            let line = line.strip_suffix("\r\n").ok_or_else(|| invalid("a chunk size line without CRLF"))?;
            let digits = line.split_once(';').map_or(line, |(size, _extensions)| size);
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("a chunk size that is not hexadecimal"));
            }
            let size = u64::from_str_radix(digits, 16).map_err(|_| invalid("a chunk size out of range"))?;
            if size == 0 {
                // Trailers are read and dropped, up to the blank line.
                let mut trailers = 0;
                loop {
                    let trailer = read_line_bounded(reader, MAX_LINE).await?;
                    if trailer == "\r\n" {
                        break;
                    }
                    trailers += 1;
                    if trailer.is_empty() || trailers > MAX_HEADERS {
                        return Err(invalid("the chunked body's trailers do not end"));
                    }
                }
                upstream.write_all(b"0\r\n\r\n").await?;
                return Ok(());
            }
            upstream.write_all(format!("{size:x}\r\n").as_bytes()).await?;
            copy_exact(reader, upstream, size).await?;
            let mut end = [0u8; 2];
            reader.read_exact(&mut end).await?;
            if &end != b"\r\n" {
                return Err(invalid("a chunk not followed by CRLF"));
            }
            upstream.write_all(b"\r\n").await?;
        },
    }
}

/// Reads a tunnel's first bytes up to the end of a TLS ClientHello, and returns them once its server
/// name (SNI) is `host`, the tunnel's destination (already checked against the policy). rustls's
/// [`Acceptor`](rustls::server::Acceptor) parses the ClientHello; nothing is answered to the client.
async fn client_hello_for<R: AsyncBufRead + Unpin>(reader: &mut R, host: &str) -> Result<Vec<u8>, TrafficRefusal> {
    let no_hello = || TrafficRefusal::NoHello { host: host.to_owned() };
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let accepted = tokio::time::timeout(CLIENT_TIMEOUT, async {
        loop {
            let chunk = reader.fill_buf().await.map_err(|_| no_hello())?;
            if chunk.is_empty() {
                return Err(no_hello());
            }
            let n = chunk.len().min(MAX_CLIENT_HELLO.saturating_sub(seen.len()));
            if n == 0 {
                return Err(TrafficRefusal::UnreadableHello {
                    host: host.to_owned(),
                    source: invalid("no ClientHello in the first 66 KiB"),
                });
            }
            let from = seen.len();
            seen.extend_from_slice(&chunk[..n]);
            reader.consume(n);
            let mut fresh = &seen[from..];
            // rustls takes what fits in its buffer each call; feed it all, asking after each read.
            while !fresh.is_empty() {
                let read = acceptor
                    .read_tls(&mut fresh)
                    .map_err(|source| TrafficRefusal::UnreadableHello { host: host.to_owned(), source })?;
                match acceptor.accept() {
                    Ok(Some(accepted)) => return Ok(accepted),
                    Ok(None) if read == 0 => {
                        return Err(TrafficRefusal::UnreadableHello {
                            host: host.to_owned(),
                            source: invalid("a TLS record too large"),
                        });
                    }
                    Ok(None) => {}
                    Err((source, _alert)) => return Err(TrafficRefusal::NotTls { host: host.to_owned(), source }),
                }
            }
        }
    })
    .await
    .map_err(|_| no_hello())??;
    match accepted.client_hello().server_name() {
        None => Err(TrafficRefusal::NoServerName { host: host.to_owned() }),
        Some(name) if normalized(name) == normalized(host) => Ok(seen),
        Some(name) => Err(TrafficRefusal::ServerNameMismatch { host: host.to_owned(), server_name: name.to_owned() }),
    }
}

async fn handle(socket: TcpStream, policy: &EgressPolicy, resolver: &Resolver) -> std::io::Result<()> {
    let (read_half, mut write_half) = socket.into_split();
    let mut reader = BufReader::new(read_half);
    let (request_line, headers) = tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut reader))
        .await
        .map_err(|_| std::io::Error::other("no request within 30 s"))??;
    let parts: Vec<&str> = request_line.split_whitespace().collect();
    let (method, target, version) = match parts[..] {
        [method, target, version] => (method, target, version),
        [method, target] => (method, target, "HTTP/1.0"),
        _ => return refuse(&mut write_half, "400 Bad Request", "a request line is METHOD TARGET VERSION").await,
    };
    let (host, port, plain) = if method.eq_ignore_ascii_case("CONNECT") {
        let (h, p) = split_host_port(target, 443);
        (h, p, None)
    } else if let Some(after) = target.strip_prefix("http://") {
        let (authority, path) = after.split_once('/').map_or((after, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let (h, p) = split_host_port(authority, 80);
        match plain_request(method, &path, version, &headers, &h, p) {
            Ok(request) => (h, p, Some(request)),
            Err(why) => {
                eprintln!("oz egress-proxy: refused {method} {h}:{p}: {why}");
                let status = match why {
                    TrafficRefusal::Malformed(_) | TrafficRefusal::DuplicateHost => "400 Bad Request",
                    _ => "403 Forbidden",
                };
                return refuse(&mut write_half, status, &why.to_string()).await;
            }
        }
    } else {
        return refuse(&mut write_half, "400 Bad Request", "send CONNECT host:port or an absolute http:// URL").await;
    };
    let destination = match resolver.destination(policy, &host, port).await {
        Ok(d) => d,
        Err(why) => {
            eprintln!("oz egress-proxy: refused {method} {host}:{port}: {why}");
            return refuse(&mut write_half, "403 Forbidden", &why.to_string()).await;
        }
    };
    let mut upstream = match tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(destination)).await {
        Ok(Ok(s)) => s,
        _ => return refuse(&mut write_half, "502 Bad Gateway", &format!("could not connect to {host}:{port}")).await,
    };
    match plain {
        None => {
            write_half.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
            let hello = match client_hello_for(&mut reader, &host).await {
                Ok(hello) => hello,
                Err(why) => {
                    // The client was told 200 already: closing the tunnel is the refusal.
                    eprintln!("oz egress-proxy: refused {method} {host}:{port}: {why}");
                    return Ok(());
                }
            };
            eprintln!("oz egress-proxy: allowed {method} {host}:{port} ({destination}), TLS for {host}");
            upstream.write_all(&hello).await?;
            // Bytes the reader already buffered past the ClientHello belong to the tunnel.
            let buffered = reader.buffer().to_vec();
            if !buffered.is_empty() {
                upstream.write_all(&buffered).await?;
            }
            let mut client = reader.into_inner().reunite(write_half).map_err(std::io::Error::other)?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        }
        Some(request) => {
            eprintln!("oz egress-proxy: allowed {method} {host}:{port} ({destination})");
            let (mut from_upstream, mut to_upstream) = upstream.into_split();
            to_upstream.write_all(request.head.as_bytes()).await?;
            // The body goes up while the answer comes down (`Expect: 100-continue`); the answer's end
            // ends the exchange, whatever the client still sends.
            let send = relay_body(&mut reader, &mut to_upstream, request.body);
            let answer = tokio::io::copy(&mut from_upstream, &mut write_half);
            tokio::pin!(send, answer);
            tokio::select! {
                answered = &mut answer => { answered?; }
                sent = &mut send => {
                    sent?;
                    answer.await?;
                }
            }
        }
    }
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

    /// Every test's bound: a proxy that forwards what it should not, or waits forever, fails here.
    async fn bounded<T>(what: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), what).await.expect("timed out")
    }

    /// An upstream on loopback that records, per connection, every byte it receives until the
    /// client closes or stays quiet for 300 ms, then answers `hello` and closes.
    struct Upstream {
        port: u16,
        received: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
        connections: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn upstream() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
                        .await;
                    let _ = tx.send(got);
                });
            }
        });
        Upstream { port, received, connections }
    }

    impl Upstream {
        async fn next_bytes(&mut self) -> Vec<u8> {
            bounded(self.received.recv()).await.unwrap()
        }
        async fn next(&mut self) -> String {
            String::from_utf8_lossy(&self.next_bytes().await).into_owned()
        }
        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A proxy allowing `allowed.test` and `other.test`, both resolving (through a fake DNS server)
    /// to loopback, which the policy allows.
    async fn proxy() -> SocketAddr {
        let dns = fake_dns(std::net::Ipv4Addr::LOCALHOST).await;
        let policy = EgressPolicy {
            domains: vec!["allowed.test".into(), "other.test".into()],
            allowed_ranges: vec!["127.0.0.0/8".parse().unwrap()],
        };
        let proxy =
            EgressProxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), policy, Resolver::with_name_server(dns).unwrap())
                .await
                .unwrap();
        let addr = proxy.local_addr().unwrap();
        tokio::spawn(proxy.run());
        addr
    }

    /// Sends `bytes` through the proxy and reads until it closes (a reset ends the reading too).
    async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> String {
        bounded(async {
            let mut client = TcpStream::connect(proxy).await.unwrap();
            client.write_all(bytes).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&got).into_owned()
        })
        .await
    }

    /// The first flight of a real TLS client (rustls) for `server_name`: its ClientHello. An IP
    /// address as the name sends no SNI.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while connection.wants_write() {
            connection.write_tls(&mut out).unwrap();
        }
        out
    }

    #[tokio::test]
    async fn a_plain_request_whose_host_header_names_another_host_is_refused() {
        let proxy = proxy().await;
        let up = upstream().await;
        let port = up.port;
        for (host, status) in [
            ("evil.test".to_owned(), "403"),
            ("other.test".to_owned(), "403"),
            (format!("other.test:{port}"), "403"),
            ("allowed.test:1".to_owned(), "403"),
            (format!("allowed.test:{port}\r\nHost: evil.test"), "400"),
        ] {
            let request = format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let response = exchange(proxy, request.as_bytes()).await;
            assert!(response.starts_with(&format!("HTTP/1.1 {status}")), "Host {host}: {response}");
        }
        assert_eq!(up.connections(), 0, "nothing reached upstream");
    }

    #[tokio::test]
    async fn a_plain_request_reaches_upstream_alone_with_its_host_and_body() {
        let proxy = proxy().await;
        let mut up = upstream().await;
        let port = up.port;
        // A body by length, then a second request smuggled on the same connection.
        let request = format!(
            "POST http://allowed.test:{port}/p?q HTTP/1.1\r\nHost: Allowed.Test.:{port}\r\nContent-Length: 5\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nConnection: keep-alive\r\nX-Kept: 1\r\n\r\nhello\
             GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n"
        );
        let response = exchange(proxy, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello"), "{response}");
        assert_eq!(
            up.next().await,
            format!(
                "POST /p?q HTTP/1.1\r\nHost: allowed.test:{port}\r\nX-Kept: 1\r\nContent-Length: 5\r\n\
                 Connection: close\r\n\r\nhello"
            )
        );
        // A chunked body (re-encoded: no extension, no trailer), and again a request after it.
        let request = format!(
            "PUT http://allowed.test:{port}/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\nGET http://allowed.test:{port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n"
        );
        let response = exchange(proxy, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(
            up.next().await,
            format!(
                "PUT /c HTTP/1.1\r\nHost: allowed.test:{port}\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            "without a Host header, the URL's is added"
        );
        assert_eq!(up.connections(), 2);
    }

    #[tokio::test]
    async fn a_tunnel_passes_only_tls_for_its_own_host() {
        let proxy = proxy().await;
        let mut up = upstream().await;
        let port = up.port;
        let connect = format!("CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");

        // The ClientHello in the same write as the CONNECT: it reaches upstream whole, and the answer
        // comes back through the tunnel.
        let hello = client_hello("allowed.test");
        let mut bytes = connect.clone().into_bytes();
        bytes.extend_from_slice(&hello);
        let response = exchange(proxy, &bytes).await;
        assert!(response.starts_with("HTTP/1.1 200 Connection established\r\n\r\n"), "{response}");
        assert!(response.ends_with("hello"), "upstream's answer came through: {response}");
        assert_eq!(up.next_bytes().await, hello, "upstream got the ClientHello as sent");

        // The ClientHello after the 200, in two pieces.
        let hello = client_hello("allowed.test");
        bounded(async {
            let mut client = TcpStream::connect(proxy).await.unwrap();
            client.write_all(connect.as_bytes()).await.unwrap();
            let mut established = vec![0u8; "HTTP/1.1 200 Connection established\r\n\r\n".len()];
            client.read_exact(&mut established).await.unwrap();
            client.write_all(&hello[..10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&hello[10..]).await.unwrap();
            let mut rest = String::new();
            client.read_to_string(&mut rest).await.unwrap();
            assert!(rest.ends_with("hello"), "{rest}");
        })
        .await;
        assert_eq!(up.next_bytes().await, hello);

        // Another server name (unlisted, or listed but not the CONNECT host), none, or not TLS at
        // all: the tunnel closes and upstream receives nothing.
        let refused: [(&str, Vec<u8>); 4] = [
            ("evil.test", client_hello("evil.test")),
            ("other.test", client_hello("other.test")),
            ("no SNI", client_hello("127.0.0.1")),
            ("plain HTTP", format!("GET / HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n").into_bytes()),
        ];
        for (what, payload) in refused {
            let mut bytes = connect.clone().into_bytes();
            bytes.extend_from_slice(&payload);
            let response = exchange(proxy, &bytes).await;
            assert!(!response.contains("hello"), "{what}: {response}");
            assert_eq!(up.next().await, "", "{what}: upstream received nothing");
        }
    }

    #[tokio::test]
    async fn a_client_hello_is_judged_by_its_server_name() {
        let judge = |bytes: Vec<u8>| async move {
            let mut reader = BufReader::new(&bytes[..]);
            client_hello_for(&mut reader, "allowed.test").await
        };
        let hello = client_hello("allowed.test");
        assert_eq!(judge(hello.clone()).await.unwrap(), hello);
        assert!(matches!(
            judge(client_hello("evil.test")).await,
            Err(TrafficRefusal::ServerNameMismatch { server_name, .. }) if server_name == "evil.test"
        ));
        assert!(matches!(judge(client_hello("10.0.0.1")).await, Err(TrafficRefusal::NoServerName { .. })));
        assert!(matches!(judge(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await, Err(TrafficRefusal::NotTls { .. })));
        assert!(matches!(judge(hello[..20].to_vec()).await, Err(TrafficRefusal::NoHello { .. })));
        assert!(matches!(judge(Vec::new()).await, Err(TrafficRefusal::NoHello { .. })));
    }

    #[test]
    fn ambiguous_plain_requests_are_refused() {
        let request = |version: &str, headers: &[&str]| {
            let headers: Vec<String> = headers.iter().map(|h| format!("{h}\r\n")).collect();
            plain_request("POST", "/", version, &headers, "allowed.test", 80)
        };
        assert!(request("HTTP/1.1", &["Host: allowed.test", "Content-Length: 3"]).is_ok());
        assert!(request("HTTP/1.1", &["Host: ALLOWED.test:80"]).is_ok());
        for headers in [
            &["Content-Length: 3", "Transfer-Encoding: chunked"][..],
            &["Content-Length: 3", "Content-Length: 4"],
            &["Content-Length: +3"],
            &["Transfer-Encoding: gzip, chunked"],
            &["X-A: 1", " folded"],
            &["X-A: 1\rHost: evil.test"],
        ] {
            assert!(matches!(request("HTTP/1.1", headers), Err(TrafficRefusal::Malformed(_))), "{headers:?}");
        }
        assert!(matches!(request("HTTP/1.0", &["Transfer-Encoding: chunked"]), Err(TrafficRefusal::Malformed(_))));
        assert!(matches!(request("HTTP/2", &[]), Err(TrafficRefusal::Malformed(_))));
        assert!(matches!(
            request("HTTP/1.1", &["Host: allowed.test", "host: allowed.test"]),
            Err(TrafficRefusal::DuplicateHost)
        ));
        assert!(matches!(
            request("HTTP/1.1", &["Host: allowed.test.evil.test"]),
            Err(TrafficRefusal::HostMismatch { .. })
        ));
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_host_port("example.com:8443", 443), ("example.com".to_owned(), 8443));
        assert_eq!(split_host_port("example.com", 80), ("example.com".to_owned(), 80));
        assert_eq!(split_host_port("[::1]:81", 80), ("::1".to_owned(), 81));
    }
}
