//! Checks on every inherited descriptor before it is used, and the one place
//! where a passed descriptor number becomes an [`OwnedFd`].
//!
//! A listener must be an open, listening, stream socket of the declared
//! family, bound to the declared address (any port when port 0 was
//! declared). A file must be open and neither a socket nor a directory.
//! Both are then made close-on-exec; listeners also non-blocking (tokio
//! rejects blocking listeners).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, SockRef, Type};

use crate::env::{Manifest, VarNames};
use crate::error::{Error, Result};
use crate::inventory::{Inventory, PassedFile, PassedListener};
use crate::spec::{ListenAddress, ListenerSpec, Network};

/// Takes ownership of descriptor `fd` after checking that it is open.
///
/// # Safety
///
/// Nothing else in this process may own `fd` (no `File`, socket or other
/// `OwnedFd` refers to it), and each number may be adopted only once: the
/// returned `OwnedFd` closes it when dropped.
pub(crate) unsafe fn adopt(fd: RawFd, entry: &str) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor flags of whatever `fd` is;
    // it cannot affect any descriptor, open or not.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EBADF) {
            Error::FdClosed {
                fd,
                entry: entry.to_owned(),
            }
        } else {
            Error::FdCheck {
                fd,
                entry: entry.to_owned(),
                operation: "fcntl(F_GETFD)",
                source: err,
            }
        });
    }
    // SAFETY: `fd` is open (F_GETFD succeeded) and the caller guarantees that
    // nothing else in this process owns it and that it is adopted only once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What kind of file `fd` is, from `fstat` (`socket`, `regular file`,
/// `pipe`...), for checks and messages.
pub(crate) fn file_kind(fd: BorrowedFd<'_>, entry: &str) -> Result<&'static str> {
    let stat = nix::sys::stat::fstat(fd).map_err(|errno| Error::FdCheck {
        fd: fd.as_raw_fd(),
        entry: entry.to_owned(),
        operation: "fstat",
        source: io::Error::from(errno),
    })?;
    Ok(match stat.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => "socket",
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "pipe",
        libc::S_IFLNK => "symbolic link",
        _ => "file of unknown type",
    })
}

fn check_err(
    fd: BorrowedFd<'_>,
    entry: &str,
    operation: &'static str,
) -> impl Fn(io::Error) -> Error {
    let fd = fd.as_raw_fd();
    let entry = entry.to_owned();
    move |source| Error::FdCheck {
        fd,
        entry: entry.clone(),
        operation,
        source,
    }
}

fn type_name(ty: Type) -> String {
    if ty == Type::STREAM {
        "stream".into()
    } else if ty == Type::DGRAM {
        "datagram (UDP)".into()
    } else if ty == Type::SEQPACKET {
        "seqpacket".into()
    } else if ty == Type::RAW {
        "raw".into()
    } else {
        format!("type {}", i32::from(ty))
    }
}

fn domain_name(domain: Domain) -> String {
    if domain == Domain::IPV4 {
        "tcp (IPv4)".into()
    } else if domain == Domain::IPV6 {
        "tcp (IPv6)".into()
    } else if domain == Domain::UNIX {
        "unix".into()
    } else {
        format!("address family {}", i32::from(domain))
    }
}

/// Checks that `fd` is a listening stream socket of family `declared` (any
/// supported family when `None`) and returns the address it is bound to.
fn inspect_socket(
    fd: BorrowedFd<'_>,
    declared: Option<Network>,
    entry: &str,
) -> Result<ListenAddress> {
    let raw = fd.as_raw_fd();
    let kind = file_kind(fd, entry)?;
    if kind != "socket" {
        return Err(Error::NotASocket {
            fd: raw,
            entry: entry.to_owned(),
            found: kind,
        });
    }
    let sock = SockRef::from(&fd);
    let ty = sock
        .r#type()
        .map_err(check_err(fd, entry, "getsockopt(SO_TYPE)"))?;
    if ty != Type::STREAM {
        return Err(Error::WrongSocketType {
            fd: raw,
            entry: entry.to_owned(),
            found: type_name(ty),
        });
    }
    let domain = sock
        .domain()
        .map_err(check_err(fd, entry, "getsockopt(SO_DOMAIN)"))?;
    let network = if domain == Domain::IPV4 || domain == Domain::IPV6 {
        Some(Network::Tcp)
    } else if domain == Domain::UNIX {
        Some(Network::Unix)
    } else {
        None
    };
    if network.is_none() || (declared.is_some() && network != declared) {
        return Err(Error::FamilyMismatch {
            fd: raw,
            entry: entry.to_owned(),
            found: domain_name(domain),
            declared: declared.map_or("tcp or unix".to_owned(), |n| n.to_string()),
        });
    }
    if !sock
        .is_listener()
        .map_err(check_err(fd, entry, "getsockopt(SO_ACCEPTCONN)"))?
    {
        return Err(Error::NotListening {
            fd: raw,
            entry: entry.to_owned(),
        });
    }
    let local = sock
        .local_addr()
        .map_err(check_err(fd, entry, "getsockname"))?;
    if let Some(addr) = local.as_socket() {
        return Ok(ListenAddress::Tcp(addr));
    }
    if let Some(path) = local.as_pathname() {
        return Ok(ListenAddress::Unix(path.to_owned()));
    }
    let found = if let Some(name) = local.as_abstract_namespace() {
        format!("abstract unix socket @{}", String::from_utf8_lossy(name))
    } else {
        "an unnamed unix socket".to_owned()
    };
    Err(Error::UnsupportedAddress {
        fd: raw,
        entry: entry.to_owned(),
        found,
    })
}

fn make_ready(fd: BorrowedFd<'_>, entry: &str, nonblocking: bool) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    let to_err = |operation| {
        let fail = check_err(fd, entry, operation);
        move |errno: nix::errno::Errno| fail(io::Error::from(errno))
    };
    if nonblocking {
        let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(to_err("fcntl(F_GETFL)"))?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(to_err("fcntl(F_SETFL, O_NONBLOCK)"))?;
    }
    let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(to_err("fcntl(F_GETFD)"))?;
    let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
    fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(to_err("fcntl(F_SETFD, FD_CLOEXEC)"))?;
    Ok(())
}

/// Checks that `fd` is the listener `declared` describes and readies it:
/// a listening (SO_ACCEPTCONN) stream socket of the declared family, bound to
/// the declared address (any port when the declared port is 0). On success it
/// is set non-blocking and close-on-exec, and the bound address is returned.
///
/// `entry` describes where the descriptor came from, for error messages
/// (for example `LIFECYCLE_SOCKETS entry 0 "smtp"`).
///
/// ```
/// use std::os::fd::AsFd;
/// use lifecycle_handoff::{validate_listener, Error, ListenerSpec};
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let spec = ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap());
/// let bound = validate_listener(listener.as_fd(), &spec, "test").unwrap();
/// assert_eq!(bound.to_string(), listener.local_addr().unwrap().to_string());
///
/// let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
/// let err = validate_listener(udp.as_fd(), &spec, "test").unwrap_err();
/// assert!(matches!(err, Error::WrongSocketType { .. }));
/// ```
pub fn validate_listener(
    fd: BorrowedFd<'_>,
    declared: &ListenerSpec,
    entry: &str,
) -> Result<ListenAddress> {
    let found = inspect_socket(fd, Some(declared.network()), entry)?;
    if !declared.address().accepts(&found) {
        return Err(Error::AddressMismatch {
            fd: fd.as_raw_fd(),
            entry: entry.to_owned(),
            found: found.to_string(),
            declared: declared.address().to_string(),
        });
    }
    make_ready(fd, entry, true)?;
    Ok(found)
}

/// Checks that `fd` is a listening stream socket (TCP or Unix path), readies
/// it like [`validate_listener`] and returns its address. Used for systemd's
/// descriptors, which carry no declared address.
pub fn inspect_listener(fd: BorrowedFd<'_>, entry: &str) -> Result<ListenAddress> {
    let found = inspect_socket(fd, None, entry)?;
    make_ready(fd, entry, true)?;
    Ok(found)
}

/// Checks that `fd` is an open file that is neither a socket nor a
/// directory, and makes it close-on-exec.
pub fn validate_file(fd: BorrowedFd<'_>, entry: &str) -> Result<()> {
    let kind = file_kind(fd, entry)?;
    if kind == "socket" || kind == "directory" {
        return Err(Error::NotAFile {
            fd: fd.as_raw_fd(),
            entry: entry.to_owned(),
            found: kind,
        });
    }
    make_ready(fd, entry, false)
}

/// Adopts and validates the descriptors `manifest` declares, starting at
/// `first_fd`: listeners then files, in entry order.
///
/// # Safety
///
/// Descriptors `first_fd .. first_fd + manifest.fd_count()` must have been
/// placed there for this process by whoever wrote the manifest, nothing
/// else in this process may own them, and this must be called at most once
/// for them (each becomes an `OwnedFd`).
pub(crate) unsafe fn adopt_manifest(
    manifest: &Manifest,
    names: &VarNames,
    first_fd: RawFd,
) -> Result<Inventory> {
    let mut inventory = Inventory::default();
    let mut fd = first_fd;
    for (index, spec) in manifest.listeners.iter().enumerate() {
        let entry = format!("{} entry {index} {:?}", names.sockets(), spec.to_string());
        // SAFETY: forwarded from this function's contract; `fd` advances by
        // one per entry, so each number is adopted once.
        let owned = unsafe { adopt(fd, &entry) }?;
        let bound = validate_listener(owned.as_fd(), spec, &entry)?;
        inventory.listeners.push(PassedListener {
            spec: spec.clone().with_address(bound),
            fd: owned,
        });
        fd += 1;
    }
    for (index, path) in manifest.files.iter().enumerate() {
        let entry = format!("{} entry {index} {:?}", names.files(), path);
        // SAFETY: as above; file descriptors follow the listeners.
        let owned = unsafe { adopt(fd, &entry) }?;
        validate_file(owned.as_fd(), &entry)?;
        inventory.files.push(PassedFile {
            path: path.clone(),
            fd: owned,
        });
        fd += 1;
    }
    Ok(inventory)
}
