//! Socket activation by `systemd-socket-activate`, named and unnamed, and
//! a listener without an activated socket.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use lifecycle_tests::{free_port, loud, require_tool};
use nix::sys::signal::Signal;

use crate::common::{field, SOON};
use crate::{
    as_service_user, config, first_connection, notify_socket, service_bin, service_dir, Running,
};

/// `systemd-socket-activate` with `args` before `--`, starting the gateway
/// with `config`, run as the service user; `NOTIFY_SOCKET` passed on with
/// `-E` when given.
pub(crate) fn activated(
    dir: &Path,
    config: &Path,
    args: &[String],
    notify: Option<&Path>,
) -> Running {
    let mut command = Command::new("systemd-socket-activate");
    command.args(args);
    if let Some(path) = notify {
        command
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", path.display()));
    }
    let (bin, installed) = service_bin();
    command
        .arg("--")
        .arg(bin)
        .arg("--config")
        .arg(config)
        .current_dir(dir);
    as_service_user(&mut command);
    Running {
        _installed: installed,
        ..Running::spawn(&mut command, &[])
    }
}

/// Delivers one message with swaks through `port`; panics with swaks's
/// output if it fails.
pub(crate) fn swaks(port: u16) {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
        .args(["--body", "through an activated socket", "--timeout", "20"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("spool"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

pub(crate) fn activation_tools() -> bool {
    // Both checked (and reported) even when the first is missing.
    let activate = require_tool("systemd-socket-activate");
    let swaks = require_tool("swaks");
    activate && swaks
}

#[test]
fn socket_activation_with_fdname_delivers_and_notifies() {
    if !activation_tools() {
        return;
    }
    let dir = service_dir();
    let systemd = notify_socket(dir.path());
    let (port, stray) = (free_port().unwrap(), free_port().unwrap());
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "", &[("smtp", "smtp", &smtp)]);
    // A second activated socket that no listener claims.
    let args = [
        "-l".to_owned(),
        smtp.clone(),
        "-l".to_owned(),
        format!("127.0.0.1:{stray}"),
        "--fdname=smtp:stray".to_owned(),
    ];
    let mut gw = activated(dir.path(), &cfg, &args, Some(systemd.path()));
    // systemd-socket-activate starts the gateway on the first connection:
    // swaks's, which the gateway then serves.
    swaks(port);
    assert_eq!(spooled(dir.path()), 1, "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(
        field(&started, "mode").as_deref(),
        Some("systemd"),
        "{started}"
    );
    let taken = gw.wait_msg("listener taken");
    assert_eq!(field(&taken, "listener").as_deref(), Some("smtp"));
    assert_eq!(field(&taken, "address").as_deref(), Some(smtp.as_str()));
    // The unclaimed socket is logged and closed.
    let closed = gw.wait_msg("closing listener nobody took");
    assert_eq!(
        field(&closed, "listener").as_deref(),
        Some("stray"),
        "{closed}"
    );
    let refused = TcpStream::connect(("127.0.0.1", stray));
    assert!(refused.is_err(), "the stray socket still accepts");
    // systemd-socket-activate execs the gateway: same pid, which notifies.
    let ready = systemd
        .wait(SOON, |d| d.has_line("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", gw.log_text()));
    assert_eq!(ready.pid, gw.pid());
    gw.signal(Signal::SIGTERM);
    systemd
        .wait(SOON, |d| d.has_line("STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1; log:\n{}", gw.log_text()));
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
}

#[test]
fn an_unnamed_activated_socket_is_found_by_its_address() {
    if !activation_tools() {
        return;
    }
    let dir = service_dir();
    let port = free_port().unwrap();
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "", &[("smtp", "smtp", &smtp)]);
    // No --fdname: LISTEN_FDNAMES is not set at all.
    let mut gw = activated(dir.path(), &cfg, &["-l".to_owned(), smtp.clone()], None);
    swaks(port);
    assert_eq!(spooled(dir.path()), 1, "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(field(&started, "mode").as_deref(), Some("systemd"));
    // Taken under the config's name, so the listener actor found it.
    let taken = gw.wait_msg("listener taken");
    assert_eq!(
        field(&taken, "listener").as_deref(),
        Some("smtp"),
        "{taken}"
    );
    assert_eq!(field(&taken, "address").as_deref(), Some(smtp.as_str()));
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
}

#[test]
fn a_listener_without_an_activated_socket_is_a_clear_error() {
    if !require_tool("systemd-socket-activate") {
        return;
    }
    let dir = service_dir();
    let (port, imap_port) = (free_port().unwrap(), free_port().unwrap());
    let smtp = format!("127.0.0.1:{port}");
    let imap = format!("127.0.0.1:{imap_port}");
    let cfg = config(
        dir.path(),
        "",
        &[("smtp", "smtp", &smtp), ("imap", "imap", &imap)],
    );
    let args = ["-l".to_owned(), smtp.clone(), "--fdname=smtp".to_owned()];
    let mut gw = activated(dir.path(), &cfg, &args, None);
    // The first connection starts the gateway, which refuses to run.
    first_connection(&smtp);
    let status = gw.wait_exit();
    assert!(!status.success(), "{status:?}\n{}", gw.log_text());
    let text = gw.log_text();
    let message = text
        .lines()
        .find(|l| l.starts_with("lifecycle-gateway: "))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    loud(&format!("missing activated socket: {message}"));
    for needle in [
        "listener \"imap\"",
        &imap,
        "FileDescriptorName=imap",
        "--fdname=imap",
    ] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
}
