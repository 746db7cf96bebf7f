//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): a load
//! balancer in front of the service sends the real client's address as the
//! first bytes of each connection. The listener reads it after the accept,
//! in the connection's own task, with a deadline and a size bound, and the
//! address it names becomes the connection's peer everywhere (admission,
//! logs, [`Conn::peer`](crate::Conn::peer)). Parsing is done by the
//! maintained `ppp` crate; this module only frames the header on the wire
//! so that not one byte after it is consumed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::conn::PeerAddr;
use crate::error::ProxyConfigError;
use crate::registry::RefuseReason;

/// How long a connection may take to send its PROXY header, by default.
pub const DEFAULT_PROXY_DEADLINE: Duration = Duration::from_secs(5);
/// The longest v2 header accepted by default (16 fixed bytes, addresses and
/// TLVs). v1 headers are at most 107 bytes by the specification.
pub const DEFAULT_PROXY_MAX_HEADER: usize = 2048;

/// The v2 signature: the first 12 bytes of every v2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header ("PROXY TCP6 ...\r\n"), per the specification.
const V1_MAX: usize = 107;
/// The shortest header of either version ("PROXY UNKNOWN\r\n" is 15 bytes,
/// a v2 header at least 16): reading this many bytes never reads past one.
const MIN_HEADER: usize = 15;
/// The fixed part of a v2 header (signature, version and command, family,
/// length).
const V2_FIXED: usize = 16;
/// A v2 header with Unix-domain addresses and no TLV.
const V2_MIN_BOUND: usize = V2_FIXED + 216;

/// Which PROXY protocol versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...\r\n`) only.
    V1,
    /// The binary header only (HAProxy `send-proxy-v2`, cloud load balancers).
    V2,
    /// Either.
    Any,
}

impl ProxyVersion {
    /// `v1`, `v2` or `any`, as in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
            ProxyVersion::Any => "any",
        }
    }
}

impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyVersion {
    type Err = ProxyConfigError;

    /// `"v1"`, `"v2"` or `"any"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            "any" => Ok(ProxyVersion::Any),
            _ => Err(ProxyConfigError::Version { text: s.to_owned() }),
        }
    }
}

/// A network of trusted proxies: an address and a prefix length, written
/// `127.0.0.1/32`, `10.0.0.0/8`, `fd00::/8` (a bare address is one host).
///
/// ```
/// use actix_lifecycle::TrustedNetwork;
///
/// let lb: TrustedNetwork = "10.0.0.0/8".parse().unwrap();
/// assert!(lb.contains("10.1.2.3".parse().unwrap()));
/// assert!(!lb.contains("192.0.2.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<TrustedNetwork>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNetwork {
    address: IpAddr,
    prefix: u8,
}

impl TrustedNetwork {
    /// True when `ip` is in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, from a dual-stack socket) counts as its IPv4 one,
    /// on either side: a network written in that form
    /// (`::ffff:10.0.0.0/104`) holds `10.1.2.3`. A wider IPv6 network
    /// (`::/0`) holds no IPv4 address.
    ///
    /// ```
    /// use actix_lifecycle::TrustedNetwork;
    ///
    /// let mapped: TrustedNetwork = "::ffff:10.0.0.1".parse().unwrap();
    /// assert!(mapped.contains("10.0.0.1".parse().unwrap()));
    /// assert!(mapped.contains("::ffff:10.0.0.1".parse().unwrap()));
    /// assert!(!mapped.contains("10.0.0.2".parse().unwrap()));
    /// let any6: TrustedNetwork = "::/0".parse().unwrap();
    /// assert!(!any6.contains("10.0.0.1".parse().unwrap()));
    /// ```
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), ip) => {
                let ip = match ip {
                    // Only a network within ::ffff:0:0/96 holds IPv4.
                    IpAddr::V4(v4) if self.prefix >= 96 && net.to_ipv4_mapped().is_some() => {
                        v4.to_ipv6_mapped()
                    }
                    IpAddr::V4(_) => return false,
                    IpAddr::V6(v6) => v6,
                };
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl fmt::Display for TrustedNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl FromStr for TrustedNetwork {
    type Err = ProxyConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProxyConfigError::Network { text: s.to_owned() };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let address: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
        };
        if prefix > max {
            return Err(ProxyConfigError::Prefix {
                text: s.to_owned(),
                max,
            });
        }
        Ok(TrustedNetwork { address, prefix })
    }
}

/// A listener's PROXY protocol settings: which version, from whom, how
/// long to wait and how much to read. Give it to
/// [`ListenerBuilder::proxy_protocol`](crate::ListenerBuilder::proxy_protocol).
///
/// A connection from outside the trusted networks is closed at once
/// (nothing is written). A trusted one must send a complete header of an
/// accepted version within the deadline; otherwise it is closed. Every such
/// refusal is counted in `<prefix>_refused_total{reason="proxy_..."}` (see
/// [`RefuseReason`]). A v2 `LOCAL` header (the proxy's own health check)
/// and a v1 `UNKNOWN` one keep the socket's peer. A Unix-domain peer is
/// always trusted (the socket file's permissions guard it).
///
/// ```
/// use std::time::Duration;
/// use actix_lifecycle::{ProxyProtocol, ProxyVersion};
///
/// let proxy = ProxyProtocol::new(ProxyVersion::V2)
///     .trust("127.0.0.1/32".parse().unwrap())
///     .trust("10.0.0.0/8".parse().unwrap())
///     .deadline(Duration::from_secs(3));
/// # drop(proxy);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ProxyProtocol {
    version: ProxyVersion,
    trusted: Vec<TrustedNetwork>,
    deadline: Duration,
    max_header: usize,
}

impl ProxyProtocol {
    /// Accept headers of `version`, from no one yet (add networks with
    /// [`trust`](Self::trust)); deadline [`DEFAULT_PROXY_DEADLINE`], size
    /// bound [`DEFAULT_PROXY_MAX_HEADER`].
    pub fn new(version: ProxyVersion) -> Self {
        ProxyProtocol {
            version,
            trusted: Vec::new(),
            deadline: DEFAULT_PROXY_DEADLINE,
            max_header: DEFAULT_PROXY_MAX_HEADER,
        }
    }

    /// Accept connections from proxies in `network`.
    pub fn trust(mut self, network: TrustedNetwork) -> Self {
        self.trusted.push(network);
        self
    }

    /// How long a connection may take to send its whole header. Default
    /// [`DEFAULT_PROXY_DEADLINE`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The longest v2 header accepted, in bytes (at least 232: a header
    /// with Unix-domain addresses). Default [`DEFAULT_PROXY_MAX_HEADER`].
    pub fn max_header(mut self, bytes: usize) -> Self {
        self.max_header = bytes.max(V2_MIN_BOUND);
        self
    }

    /// The version(s) accepted.
    pub fn version(&self) -> ProxyVersion {
        self.version
    }

    /// The header deadline.
    pub fn header_deadline(&self) -> Duration {
        self.deadline
    }

    /// True when a connection from `peer` may send a PROXY header.
    pub fn is_trusted(&self, peer: &PeerAddr) -> bool {
        match peer.ip() {
            Some(ip) => self.trusted.iter().any(|n| n.contains(ip)),
            None => true,
        }
    }

    /// Reads one PROXY header from `stream`, consuming exactly its bytes.
    /// Returns the client address it names (`None` for a v2 `LOCAL` or
    /// v1 `UNKNOWN` header, or a v2 header of a non-IP family), or why the
    /// connection is refused. No deadline here: the caller adds it.
    pub(crate) async fn read_header<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<Option<SocketAddr>, RefuseReason> {
        let partial = |_| RefuseReason::ProxyPartial;
        let mut buf = vec![0u8; MIN_HEADER];
        let mut got = 0;
        // Byte-exact: stop at the first byte that already rules the header out.
        while got < MIN_HEADER {
            let n = stream.read(&mut buf[got..]).await.map_err(partial)?;
            if n == 0 {
                return Err(RefuseReason::ProxyPartial);
            }
            got += n;
            let seen = &buf[..got];
            let v1 = b"PROXY ".starts_with(&seen[..got.min(6)]);
            let v2 = V2_SIGNATURE.starts_with(&seen[..got.min(12)]);
            if !v1 && !v2 {
                return Err(RefuseReason::ProxyMalformed);
            }
        }
        if buf[..12] == V2_SIGNATURE {
            if self.version == ProxyVersion::V1 {
                return Err(RefuseReason::ProxyVersion);
            }
            buf.resize(V2_FIXED, 0);
            stream
                .read_exact(&mut buf[MIN_HEADER..])
                .await
                .map_err(partial)?;
            let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if len > self.max_header {
                return Err(RefuseReason::ProxyOversized);
            }
            buf.resize(len, 0);
            stream
                .read_exact(&mut buf[V2_FIXED..])
                .await
                .map_err(partial)?;
            let header =
                ppp::v2::Header::try_from(&buf[..]).map_err(|_| RefuseReason::ProxyMalformed)?;
            Ok(match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            })
        } else {
            // "PROXY " (the loop above ruled out anything else).
            if self.version == ProxyVersion::V2 {
                return Err(RefuseReason::ProxyVersion);
            }
            // The line ends at CRLF; read it byte by byte so that not one
            // byte of the client's own data is taken (at most 92 reads).
            while !buf.ends_with(b"\r\n") {
                if buf.len() >= V1_MAX {
                    return Err(RefuseReason::ProxyOversized);
                }
                let byte = stream.read_u8().await.map_err(partial)?;
                buf.push(byte);
            }
            let header =
                ppp::v1::Header::try_from(&buf[..]).map_err(|_| RefuseReason::ProxyMalformed)?;
            Ok(match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn v2(addresses: ppp::v2::Addresses, command: u8) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(0x20 | command, ppp::v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    fn client() -> SocketAddr {
        "192.0.2.7:40001".parse().unwrap()
    }

    fn v2_client() -> Vec<u8> {
        let lb: SocketAddr = "127.0.0.1:25".parse().unwrap();
        v2((client(), lb).into(), 1)
    }

    /// Feeds `bytes` (then end of stream) and reads one header; returns
    /// the outcome and the bytes left after it.
    async fn read(
        version: ProxyVersion,
        bytes: &[u8],
    ) -> (Result<Option<SocketAddr>, RefuseReason>, Vec<u8>) {
        let proxy = ProxyProtocol::new(version);
        let mut input = bytes;
        let outcome = proxy.read_header(&mut input).await;
        (outcome, input.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_leave_the_data() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 25\r\nEHLO x\r\n";
        for version in [ProxyVersion::V1, ProxyVersion::Any] {
            let (got, rest) = read(version, v1).await;
            assert_eq!(got, Ok(Some(client())));
            assert_eq!(rest, b"EHLO x\r\n");
        }
        let mut bytes = v2_client();
        bytes.extend_from_slice(b"EHLO x\r\n");
        for version in [ProxyVersion::V2, ProxyVersion::Any] {
            let (got, rest) = read(version, &bytes).await;
            assert_eq!(got, Ok(Some(client())));
            assert_eq!(rest, b"EHLO x\r\n");
        }
        let six = b"PROXY TCP6 2001:db8::7 ::1 40001 25\r\n";
        assert_eq!(
            read(ProxyVersion::V1, six).await.0,
            Ok(Some("[2001:db8::7]:40001".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn local_and_unknown_keep_the_socket_peer() {
        let (got, rest) = read(ProxyVersion::V1, b"PROXY UNKNOWN\r\nX").await;
        assert_eq!((got, rest), (Ok(None), b"X".to_vec()));
        let local = v2(ppp::v2::Addresses::Unspecified, 0);
        assert_eq!(read(ProxyVersion::V2, &local).await.0, Ok(None));
    }

    #[tokio::test]
    async fn bad_headers_are_refused_with_their_reason() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 25\r\n".to_vec();
        let v2 = v2_client();
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.extend(std::iter::repeat_n(b'1', 120));
        let mut long_v2 = v2[..14].to_vec();
        long_v2.extend_from_slice(&u16::MAX.to_be_bytes());
        let mut bad_v2 = v2.clone();
        bad_v2[12] = 0x30; // version 3
        let cases: Vec<(&str, ProxyVersion, Vec<u8>, RefuseReason)> = vec![
            (
                "not a header",
                ProxyVersion::Any,
                b"EHLO client.example\r\n".to_vec(),
                RefuseReason::ProxyMalformed,
            ),
            (
                "first byte wrong",
                ProxyVersion::Any,
                b"X".to_vec(),
                RefuseReason::ProxyMalformed,
            ),
            (
                "v1 garbage",
                ProxyVersion::V1,
                b"PROXY TCP4 a b c d\r\n".to_vec(),
                RefuseReason::ProxyMalformed,
            ),
            (
                "v1 bad port",
                ProxyVersion::V1,
                b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 25\r\n".to_vec(),
                RefuseReason::ProxyMalformed,
            ),
            (
                "v2 bad version",
                ProxyVersion::V2,
                bad_v2,
                RefuseReason::ProxyMalformed,
            ),
            (
                "empty",
                ProxyVersion::Any,
                Vec::new(),
                RefuseReason::ProxyPartial,
            ),
            (
                "v1 cut",
                ProxyVersion::V1,
                v1[..20].to_vec(),
                RefuseReason::ProxyPartial,
            ),
            (
                "v1 signature cut",
                ProxyVersion::V1,
                b"PROX".to_vec(),
                RefuseReason::ProxyPartial,
            ),
            (
                "v2 cut",
                ProxyVersion::V2,
                v2[..20].to_vec(),
                RefuseReason::ProxyPartial,
            ),
            (
                "v2 signature cut",
                ProxyVersion::V2,
                v2[..10].to_vec(),
                RefuseReason::ProxyPartial,
            ),
            (
                "v1 too long",
                ProxyVersion::V1,
                long_v1,
                RefuseReason::ProxyOversized,
            ),
            (
                "v2 too long",
                ProxyVersion::V2,
                long_v2,
                RefuseReason::ProxyOversized,
            ),
            (
                "v1 on v2",
                ProxyVersion::V2,
                v1.clone(),
                RefuseReason::ProxyVersion,
            ),
            (
                "v2 on v1",
                ProxyVersion::V1,
                v2.clone(),
                RefuseReason::ProxyVersion,
            ),
        ];
        for (what, version, bytes, want) in cases {
            assert_eq!(read(version, &bytes).await.0, Err(want), "{what}");
        }
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_whole() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let proxy = ProxyProtocol::new(ProxyVersion::Any);
        let bytes = v2_client();
        let writer = async move {
            for b in bytes.chunks(3) {
                tx.write_all(b).await.unwrap();
                tokio::task::yield_now().await;
            }
            tx
        };
        let (got, _tx) = tokio::join!(proxy.read_header(&mut rx), writer);
        assert_eq!(got, Ok(Some(client())));
    }

    #[test]
    fn trusted_networks_parse_and_match() {
        let net = |s: &str| s.parse::<TrustedNetwork>();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("127.0.0.1/32").unwrap().contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1/32").unwrap().contains(ip("127.0.0.2")));
        assert!(net("127.0.0.1").unwrap().contains(ip("::ffff:127.0.0.1")));
        assert!(net("0.0.0.0/0").unwrap().contains(ip("192.0.2.1")));
        assert!(net("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!net("fd00::/8").unwrap().contains(ip("127.0.0.1")));
        // A network written in IPv4-mapped form holds the IPv4 peers it
        // maps (a dual-stack peer arrives as plain IPv4 here).
        assert!(net("::ffff:10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(net("::ffff:10.0.0.0/104").unwrap().contains(ip("10.9.8.7")));
        assert!(!net("::ffff:10.0.0.0/104").unwrap().contains(ip("11.0.0.1")));
        assert!(!net("::/0").unwrap().contains(ip("10.0.0.1")));
        assert!(net("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(net("127.0.0.1/32").unwrap().to_string(), "127.0.0.1/32");
        let e = net("127.0.0.1/40").unwrap_err();
        assert_eq!(
            e,
            ProxyConfigError::Prefix {
                text: "127.0.0.1/40".into(),
                max: 32
            }
        );
        assert!(
            e.to_string().contains("127.0.0.1/40") && e.to_string().contains("0 to 32"),
            "{e}"
        );
        let e = net("localhost").unwrap_err();
        assert!(matches!(e, ProxyConfigError::Network { .. }));
        assert!(
            e.to_string().contains("\"localhost\"") && e.to_string().contains("10.0.0.0/8"),
            "{e}"
        );
        let e = "v3".parse::<ProxyVersion>().unwrap_err();
        assert!(
            e.to_string().contains("\"v3\"") && e.to_string().contains("\"any\""),
            "{e}"
        );
    }

    #[test]
    fn unix_peers_are_trusted_and_others_only_when_listed() {
        let proxy = ProxyProtocol::new(ProxyVersion::Any).trust("127.0.0.1/32".parse().unwrap());
        assert!(proxy.is_trusted(&PeerAddr::Unix(None)));
        assert!(proxy.is_trusted(&PeerAddr::Tcp("127.0.0.1:1".parse().unwrap())));
        assert!(!proxy.is_trusted(&PeerAddr::Tcp("127.0.0.2:1".parse().unwrap())));
        assert!(!ProxyProtocol::new(ProxyVersion::Any).is_trusted(&PeerAddr::Tcp(client())));
    }
}
