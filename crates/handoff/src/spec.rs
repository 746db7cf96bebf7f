//! What a program asks for: listeners by name and address, files by path.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Listen backlog used when a [`ListenerSpec`] does not set one.
///
/// tokio and std use 128, which makes clients wait a second (a SYN
/// retransmit) per overflow under load.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// The kind of socket a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// A TCP stream listener (IPv4 or IPv6).
    Tcp,
    /// A Unix-domain stream listener.
    Unix,
}

impl Network {
    /// The name used in the hand-off protocol: `tcp` or `unix`.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Unix => "unix",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// A TCP address; port 0 asks the kernel for a free port.
    Tcp(SocketAddr),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

impl ListenAddress {
    /// The network of this address.
    pub fn network(&self) -> Network {
        match self {
            ListenAddress::Tcp(_) => Network::Tcp,
            ListenAddress::Unix(_) => Network::Unix,
        }
    }

    /// True when a socket bound to `actual` satisfies this declared address:
    /// same network, same IP (or path), and the same port unless this
    /// address declares port 0 (any port).
    ///
    /// ```
    /// use lifecycle_handoff::ListenAddress;
    ///
    /// let any_port = ListenAddress::Tcp("127.0.0.1:0".parse().unwrap());
    /// let bound = ListenAddress::Tcp("127.0.0.1:40001".parse().unwrap());
    /// assert!(any_port.accepts(&bound));
    /// assert!(!bound.accepts(&any_port));
    /// ```
    pub fn accepts(&self, actual: &ListenAddress) -> bool {
        match (self, actual) {
            (ListenAddress::Tcp(want), ListenAddress::Tcp(got)) => {
                want.ip() == got.ip() && (want.port() == 0 || want.port() == got.port())
            }
            (ListenAddress::Unix(want), ListenAddress::Unix(got)) => want == got,
            _ => false,
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => write!(f, "{addr}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A listener the program needs, keyed by a stable name (the config's
/// listener name). Two listeners on one address stay two.
///
/// ```
/// use lifecycle_handoff::{ListenerSpec, Network};
///
/// let smtp = ListenerSpec::tcp("smtp", "127.0.0.1:2525".parse().unwrap()).with_backlog(4096);
/// assert_eq!(smtp.name(), "smtp");
/// assert_eq!(smtp.network(), Network::Tcp);
/// assert_eq!(smtp.backlog(), 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerSpec {
    name: String,
    address: ListenAddress,
    backlog: u32,
}

impl ListenerSpec {
    /// A listener with the given name and address, backlog [`DEFAULT_BACKLOG`].
    pub fn new(name: impl Into<String>, address: ListenAddress) -> Self {
        ListenerSpec {
            name: name.into(),
            address,
            backlog: DEFAULT_BACKLOG,
        }
    }

    /// A TCP listener.
    pub fn tcp(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self::new(name, ListenAddress::Tcp(addr))
    }

    /// A Unix-domain stream listener.
    pub fn unix(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self::new(name, ListenAddress::Unix(path.into()))
    }

    /// Sets the listen backlog used where this listener is bound
    /// (default [`DEFAULT_BACKLOG`]).
    pub fn with_backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// The listener's stable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared address.
    pub fn address(&self) -> &ListenAddress {
        &self.address
    }

    /// The declared network.
    pub fn network(&self) -> Network {
        self.address.network()
    }

    /// The listen backlog used when this process binds the listener.
    pub fn backlog(&self) -> u32 {
        self.backlog
    }

    /// The same listener at another address (the bound one, when port 0
    /// was declared).
    pub fn with_address(mut self, address: ListenAddress) -> Self {
        self.address = address;
        self
    }
}

impl fmt::Display for ListenerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {})", self.name, self.network(), self.address)
    }
}

/// A privileged file the program needs (a TLS key, say). A path may be
/// asked for more than once; each request gets its own descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileSpec {
    path: PathBuf,
}

impl FileSpec {
    /// A file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSpec { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
