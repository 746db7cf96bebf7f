//! The control socket without a privileged parent (as root, to start the
//! gateway as user nobody in the immediate mode; skipped with a printed
//! reason otherwise): the serving process answers `status` and
//! `connections`, `ctl upgrade --wait` hands over to a successor that
//! serves the same socket (same inode: taken over, not re-bound) and
//! replies with its pid and generation, a failing binary gets a non-zero
//! exit with the reason while the process serves on, and `ctl stop` stops
//! the successor.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::ctl::{ctl, json};
use common::upgrading::{as_nobody, gone, Reaper, Setup, NOBODY};
use common::SOON;
use lifecycle_tests::{loud, require_root};

fn greets(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf[..3] == b"220"
}

#[test]
fn the_serving_process_serves_the_control_socket_and_hands_it_on() {
    if !require_root("starting the gateway as user nobody") {
        return;
    }
    let (setup, _) = Setup::new();
    let run = setup.dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    nix::unistd::chown(&run, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    for path in [&setup.cert, &setup.key] {
        nix::unistd::chown(path, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    }
    let socket = run.join("control.sock");
    let bin = setup.bin.clone();
    let dir = setup.dir.path().to_owned();
    let head = format!("control_socket = \"{}\"", socket.display());
    let gw = setup.launch(&head, as_nobody, "ready");
    let first = gw.pid();
    let mut reaper = Reaper(Vec::new());
    let inode = std::fs::metadata(&socket).unwrap().ino();

    // An idle IMAP session, seen by `status` and `connections`.
    let mut idle = TcpStream::connect(gw.imap).unwrap();
    let mut greeting = [0u8; 4];
    idle.read_exact(&mut greeting).unwrap();
    let status = json(&ctl(&socket, &["status", "--json"]));
    loud(&format!("status: {status}"));
    assert_eq!(status["mode"], "immediate", "{status}");
    assert_eq!(status["pid"], first, "{status}");
    assert_eq!(status["generation"], 1, "{status}");
    let imap = (status["listeners"].as_array().unwrap().iter())
        .find(|l| l["name"] == "imap")
        .unwrap_or_else(|| panic!("no imap listener: {status}"));
    assert_eq!(imap["live"], 1, "{status}");
    assert_eq!(imap["refused"], 0, "{status}");
    let connections = json(&ctl(&socket, &["connections", "--json"]));
    let listed = connections["connections"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{connections}");
    assert_eq!(listed[0]["listener"], "imap", "{connections}");
    assert_eq!(listed[0]["generation"], 1, "{connections}");
    drop(idle);

    // The hand-over: the reply names the successor, which serves the same
    // socket.
    let out = ctl(&socket, &["upgrade", "--wait", "--json"]);
    assert!(out.status.success(), "{out:?}\n{}", gw.log_text());
    let reply = json(&out);
    assert_eq!(
        (reply["from"].as_u64(), reply["to"].as_u64()),
        (Some(1), Some(2))
    );
    let successor = u32::try_from(reply["pid"].as_u64().unwrap()).unwrap();
    assert_ne!(successor, first, "{reply}");
    reaper.0.push(i32::try_from(successor).unwrap());
    let deadline = Instant::now() + SOON;
    while !gone(i32::try_from(first).unwrap()) {
        assert!(Instant::now() < deadline, "generation 1 still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(status["pid"], successor, "{status}");
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(status["upgrades"]["ok"], 1, "{status}");
    let after = std::fs::metadata(&socket).unwrap().ino();
    assert_eq!(after, inode, "the same socket, not a re-bound one");
    assert!(greets(gw.smtp), "generation 2 serves");

    // A binary that exits at start: non-zero with the reason; generation 2
    // serves on and keeps answering.
    let broken = dir.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &bin).unwrap();
    let out = ctl(&socket, &["upgrade", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    loud(&format!("failed hand-over: {err}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("generation 2 keeps serving"), "{err}");
    assert!(greets(gw.smtp), "generation 2 still serves");
    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(status["pid"], successor, "{status}");
    assert_eq!(status["last_upgrade"]["result"], "failed", "{status}");
    assert_eq!(status["upgrades"]["failed"], 1, "{status}");

    // `ctl stop` returns once the successor exited.
    let out = ctl(&socket, &["stop"]);
    assert!(out.status.success(), "{out:?}");
    // Its control connection closes as the runtime ends, just before the
    // process is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(i32::try_from(successor).unwrap()) {
        assert!(
            Instant::now() < deadline,
            "generation 2 still runs after ctl stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
