//! Socket activation and inherited sockets started as root: the gateway
//! drops to its user in place, or names the fix when it has none.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lifecycle_tests::{free_port, loud, require_root, require_tool};
use nix::sys::signal::Signal;

use crate::activation::{activation_tools, spooled, swaks};
use crate::common::{self, field, BIN, SOON};
use crate::{assert_nobody_without_privileges, config, first_connection, greeted, Running};

/// `systemd-socket-activate -l address --fdname=smtp -- gateway --config
/// config`, as root (a unit without `User=`).
fn activated_as_root(dir: &Path, config: &Path, address: &str) -> Running {
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["-l", address, "--fdname=smtp", "--"])
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .current_dir(dir);
    Running::spawn(&mut command, &[])
}

#[test]
fn socket_activation_as_root_drops_to_the_user_in_place() {
    if !require_root("socket activation started as root") || !activation_tools() {
        return;
    }
    // A directory `nobody` can traverse; the spool does not exist yet: the
    // gateway creates it for `nobody` before it drops.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port().unwrap();
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "user = \"nobody\"", &[("smtp", "smtp", &smtp)]);
    let mut gw = activated_as_root(dir.path(), &cfg, &smtp);
    swaks(port);
    assert_eq!(spooled(dir.path()), 1, "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(field(&started, "mode").as_deref(), Some("systemd"));
    let dropped = gw.wait_msg("privileges dropped in place");
    loud(&format!("socket activation as root: {dropped}"));
    assert_eq!(field(&dropped, "user").as_deref(), Some("nobody"));
    assert_eq!(field(&dropped, "mode").as_deref(), Some("systemd"));
    for key in ["uid", "gid"] {
        assert_eq!(common::number(&dropped, key), Some(65534), "{dropped}");
    }
    gw.wait_msg("spool directory created for the service user");
    // The serving process (systemd-socket-activate execs it: same pid) has
    // nothing of root left.
    assert_nobody_without_privileges(gw.pid());
    let proc = lifecycle_tests::ProcStats::new(gw.pid());
    assert_eq!(proc.status_text("CapPrm").unwrap(), "0000000000000000");
    let message = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .unwrap();
    let owner = std::os::unix::fs::MetadataExt::uid(&message.metadata().unwrap());
    assert_eq!(owner, 65534, "spooled by the service user");
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
}

#[test]
fn socket_activation_as_root_without_a_user_names_the_fix_for_this_mode() {
    if !require_root("socket activation started as root")
        || !require_tool("systemd-socket-activate")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "", &[("smtp", "smtp", &smtp)]);
    let mut gw = activated_as_root(dir.path(), &cfg, &smtp);
    // The first connection starts the gateway, which refuses to run.
    first_connection(&smtp);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(2), "{status:?}\n{}", gw.log_text());
    let text = gw.log_text();
    let message = text
        .lines()
        .find(|l| l.starts_with("lifecycle-gateway: "))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    loud(&format!("socket activation as root, no user: {message}"));
    for needle in ["socket activation", "no `user`", "`User=` in the unit"] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
    assert!(!text.contains(r#""msg":"ready""#), "{text}");
}

/// Kills and reaps the child when the test ends, however it ends.
struct Reaped(lifecycle_handoff::ChildProcess);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn inherited_sockets_from_a_parent_that_kept_root_drop_to_the_user_in_place() {
    if !require_root("a gateway started as root with inherited sockets") {
        return;
    }
    use lifecycle_handoff::{bind_listener, ChildSpawner, Inventory, ListenerSpec, PassedListener};
    // This test plays a parent that binds, passes the socket and does not
    // drop (as a foreign supervisor might): the gateway starts as root in
    // inherited mode with `user = "nobody"`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap());
    let (fd, bound) = bind_listener(&spec).unwrap();
    let smtp = bound.to_string();
    let inventory = Inventory {
        listeners: vec![PassedListener {
            spec: spec.with_address(bound),
            fd,
        }],
        files: vec![],
    };
    let cfg = config(dir.path(), "user = \"nobody\"", &[("smtp", "smtp", &smtp)]);
    let log = dir.path().join("gateway.log");
    // `sh` execs the gateway: same pid, same parent (this test), the passed
    // socket at fd 3, the log in a file.
    let child = ChildSpawner::new()
        .unwrap()
        .program("/bin/sh")
        .args([
            "-c".as_ref(),
            r#"exec "$0" --config "$1" 2>"$2""#.as_ref(),
            BIN.as_ref(),
            cfg.as_os_str(),
            log.as_os_str(),
        ])
        .spawn(&inventory)
        .unwrap();
    drop(inventory);
    let mut child = Reaped(child);
    let pid = child.0.id();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + SOON;
    while !text().contains(r#""msg":"ready""#) {
        assert!(Instant::now() < deadline, "not ready:\n{}", text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = text();
    let dropped = all
        .lines()
        .find(|l| l.contains(r#""msg":"privileges dropped in place""#))
        .unwrap_or_else(|| panic!("no drop logged:\n{all}"));
    assert_eq!(field(dropped, "mode").as_deref(), Some("inherited"));
    assert_nobody_without_privileges(pid);
    let mut c = greeted(smtp.parse().unwrap());
    c.send(
        "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    );
    for code in ["250", "250", "250", "354"] {
        c.expect(code);
    }
    c.send("Subject: t\r\n\r\ninherited\r\n.\r\n");
    c.expect("250");
    assert_eq!(spooled(dir.path()), 1);
    c.send("QUIT\r\n");
    c.expect("221");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", text());
}
