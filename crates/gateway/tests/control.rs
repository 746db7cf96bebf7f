//! The operator's control socket and `lifecycle-gateway ctl`, end to end
//! with the privileged start (as root; skipped with a printed reason
//! otherwise): `upgrade --wait` reports success and failure with its exit
//! status, concurrent callers share one upgrade, `status` shows the
//! draining generation, and bad clients never stall the root parent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::ctl::{ctl, json};
use common::upgrading::Setup;
use common::{Gateway, BIN, SOON};
use lifecycle_tests::{loud, require_root};
use nix::sys::signal::Signal;

fn greets(gw: &Gateway) -> bool {
    let mut s = TcpStream::connect(gw.smtp).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf[..3] == b"220"
}

#[test]
fn upgrade_wait_reports_the_result_and_concurrent_callers_share_one_upgrade() {
    if !require_root("the privileged start with a control socket") {
        return;
    }
    let (setup, _) = Setup::new();
    let (bin, dir) = (setup.bin.clone(), setup.dir.path().to_owned());
    let (gw, socket) = setup.start_controlled();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");

    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(status["phase"], "serving", "{status}");
    assert_eq!(status["generation"], 1, "{status}");

    // An idle IMAP client keeps generation 1 draining for its graces.
    let mut idle = TcpStream::connect(gw.imap).unwrap();
    let mut greeting = [0u8; 4];
    idle.read_exact(&mut greeting).unwrap();

    let out = ctl(&socket, &["upgrade", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", gw.log_text());
    assert!(text.contains("generation 2"), "{text}");
    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(status["draining"][0]["generation"], 1, "{status}");
    assert_eq!(status["last_upgrade"]["result"], "ok", "{status}");
    let table = String::from_utf8_lossy(&ctl(&socket, &["status"]).stdout).into_owned();
    assert!(
        table.contains("draining") && table.contains("1 (pid"),
        "{table}"
    );
    drop(idle);

    // Concurrent callers: the new binary waits for a gate, so that the
    // second caller arrives while the first one's upgrade runs.
    let real = dir.join("real-gateway");
    std::fs::copy(BIN, &real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gate = dir.join("gate");
    let script = dir.join("gated");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.02; done\nexec {real} \"$@\"\n",
            gate = gate.display(),
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&script, &bin).unwrap();
    let callers: Vec<_> = (0..2)
        .map(|i| {
            let socket = socket.clone();
            let caller = std::thread::spawn(move || ctl(&socket, &["upgrade", "--wait", "--json"]));
            // Each request is in the loop before the next caller starts.
            let needle = "control socket: upgrade --wait";
            let deadline = Instant::now() + SOON;
            while common::upgrading::count(&gw, needle) < 2 + i {
                assert!(Instant::now() < deadline, "{}", gw.log_text());
                std::thread::sleep(Duration::from_millis(10));
            }
            caller
        })
        .collect();
    let busy = ctl(&socket, &["upgrade"]);
    assert_eq!(busy.status.code(), Some(1), "{busy:?}");
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("upgrade in progress"),
        "{busy:?}"
    );
    std::fs::write(&gate, "").unwrap();
    let replies: Vec<serde_json::Value> = callers
        .into_iter()
        .map(|c| {
            let out = c.join().unwrap();
            assert!(out.status.success(), "{out:?}");
            json(&out)
        })
        .collect();
    assert_eq!(replies[0], replies[1], "the same answer");
    assert_eq!(replies[0]["to"], 3, "{}", replies[0]);
    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(
        status["upgrades"]["ok"], 2,
        "one upgrade for two callers: {status}"
    );

    // A binary that exits at start: non-zero with the reason; generation 3
    // serves on.
    let broken = dir.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &bin).unwrap();
    let out = ctl(&socket, &["upgrade", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    loud(&format!("failed upgrade: {err}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("exited with code 1") && err.contains("generation 3 keeps serving"),
        "{err}"
    );
    assert!(greets(&gw), "the old child still serves");
    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(status["generation"], 3, "{status}");
    assert_eq!(status["last_upgrade"]["result"], "failed", "{status}");
}

#[test]
fn bad_clients_never_stall_the_parent_and_sigterm_still_stops_it() {
    if !require_root("the privileged start with a control socket") {
        return;
    }
    let (setup, _) = Setup::new();
    let (mut gw, socket) = setup.start_controlled();
    let ask = |line: &[u8]| {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        let _ = s.write_all(line);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    };
    let garbage = ask(b"\x00\xffnot json\n");
    assert!(garbage.contains("bad request"), "{garbage}");
    let unknown = ask(b"{\"version\":1,\"command\":\"reboot\"}\n");
    assert!(unknown.contains("unknown command"), "{unknown}");
    let version = ask(b"{\"version\":9,\"command\":\"status\"}\n");
    assert!(
        version.contains("unsupported protocol version 9"),
        "{version}"
    );
    let long = ask(&vec![b'x'; 1 << 20]);
    assert!(long.contains("longer than"), "{long:.200}");

    // A caller with the wrong uid, run as nobody: 0600 keeps it out at
    // connect(); with the mode opened up, SO_PEERCRED still refuses it.
    // A copy nobody may execute, wherever the checkout is (a 0700 home).
    let nobody = lifecycle_tests::ServiceUser::nobody().unwrap();
    let (mut as_nobody_cmd, _installed) = nobody.command(Path::new(BIN)).unwrap();
    as_nobody_cmd
        .arg("ctl")
        .arg("--socket")
        .arg(&socket)
        .arg("status");
    let mut as_nobody = || as_nobody_cmd.output().unwrap();
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uid 65534 is neither root"), "{err}");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Clients that sit: connected and silent, a request never read, half
    // a line.
    let sleepers: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(b"{\"version\":1,").unwrap();
    let mut unread = UnixStream::connect(&socket).unwrap();
    unread
        .write_all(b"{\"version\":1,\"command\":\"status\"}\n")
        .unwrap();

    let started = Instant::now();
    let out = ctl(&socket, &["status", "--json"]);
    let latency = started.elapsed();
    loud(&format!(
        "ctl status with 10 bad clients connected: {latency:?} (process start included)"
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["phase"], "serving");

    gw.signal(Signal::SIGTERM);
    let stopped = Instant::now();
    let status = gw
        .wait_exit(SOON)
        .unwrap_or_else(|| panic!("not stopped:\n{}", gw.log_text()));
    loud(&format!(
        "SIGTERM with bad control clients: stopped in {:?}",
        stopped.elapsed()
    ));
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
    assert!(!socket.exists(), "the socket is removed at exit");
    drop((sleepers, half, unread));
}

/// Reads notify datagrams until one contains `needle`; all seen so far.
fn datagram_with(socket: &std::os::unix::net::UnixDatagram, needle: &str) -> String {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no datagram with {needle:?}: {e}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

#[test]
fn a_control_upgrade_sends_the_notify_reload_datagrams() {
    if !require_root("the privileged start with a control socket") {
        return;
    }
    let (setup, _) = Setup::new();
    let (bin, dir) = (setup.bin.clone(), setup.dir.path().to_owned());
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(SOON)).unwrap();
    let socket = dir.join("run/control.sock");
    let head = format!(
        "user = \"nobody\"\ncontrol_socket = \"{}\"",
        socket.display()
    );
    let gw = setup.launch(
        &head,
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &notify_path);
        },
        "service ready",
    );
    datagram_with(&notify, "READY=1");

    let out = ctl(&socket, &["upgrade", "--wait"]);
    assert!(out.status.success(), "{out:?}\n{}", gw.log_text());
    let reloading = datagram_with(&notify, "RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let ready = datagram_with(&notify, "READY=1");
    assert!(ready.contains("STATUS=serving generation 2"), "{ready:?}");

    let broken = dir.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &bin).unwrap();
    let out = ctl(&socket, &["upgrade", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    datagram_with(&notify, "RELOADING=1");
    let ready = datagram_with(&notify, "READY=1");
    assert!(ready.contains("STATUS=upgrade failed"), "{ready:?}");
    loud(&format!(
        "notify-reload datagrams: {reloading:?} then {ready:?}"
    ));
}
