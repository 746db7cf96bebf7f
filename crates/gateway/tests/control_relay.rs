//! `status` and `connections` in the privileged start (as root; skipped
//! with a printed reason otherwise): the root parent holds no connection,
//! so it asks each child's own control endpoint (bound by the parent,
//! passed as `lifecycle-child-control`) from a helper thread: per-listener
//! live and refused counts of the serving generation, the live count of a
//! draining one, and every child's connections.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ctl::{ctl, json};
use common::upgrading::Setup;
use common::SOON;
use lifecycle_tests::{loud, require_root};

/// An SMTP session in the middle of its DATA: it stays open through a
/// drain until its graces end.
fn in_data(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let mut expect = |prefix: &str, reader: &mut BufReader<TcpStream>| loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with(prefix), "{line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    let mut w = stream.try_clone().unwrap();
    expect("220", &mut reader);
    for (say, want) in [
        ("EHLO relay.test\r\n", "250"),
        ("MAIL FROM:<a@relay.test>\r\n", "250"),
        ("RCPT TO:<b@gw.test>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        w.write_all(say.as_bytes()).unwrap();
        expect(want, &mut reader);
    }
    w.write_all(b"Subject: half a message\r\n").unwrap();
    stream
}

#[test]
fn the_parent_relays_status_and_connections_from_its_children() {
    if !require_root("the privileged start with a control socket") {
        return;
    }
    let (mut setup, _) = Setup::new();
    setup.drain_grace = "20s";
    let (gw, socket) = setup.start_controlled();

    let session = in_data(gw.smtp);
    let status = json(&ctl(&socket, &["status", "--json"]));
    loud(&format!("status: {status}"));
    assert!(status["incomplete"].is_null(), "{status}");
    let smtp = (status["listeners"].as_array().unwrap().iter())
        .find(|l| l["name"] == "smtp")
        .unwrap_or_else(|| panic!("no smtp listener: {status}"));
    assert_eq!(
        (smtp["live"].as_u64(), smtp["refused"].as_u64()),
        (Some(1), Some(0)),
        "{status}"
    );
    assert_eq!(status["serving"]["live"], 1, "{status}");
    let connections = json(&ctl(&socket, &["connections", "--json"]));
    let listed = connections["connections"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{connections}");
    assert_eq!(listed[0]["listener"], "smtp", "{connections}");
    assert_eq!(listed[0]["generation"], 1, "{connections}");
    let table = String::from_utf8_lossy(&ctl(&socket, &["connections"]).stdout).into_owned();
    assert!(table.contains("smtp"), "{table}");

    // After an upgrade the session keeps generation 1 draining: its live
    // count comes from generation 1's endpoint, the listeners from 2's.
    let out = ctl(&socket, &["upgrade", "--wait"]);
    assert!(out.status.success(), "{out:?}\n{}", gw.log_text());
    let status = json(&ctl(&socket, &["status", "--json"]));
    loud(&format!("status after the upgrade: {status}"));
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(status["draining"][0]["generation"], 1, "{status}");
    assert_eq!(status["draining"][0]["live"], 1, "{status}");
    assert_eq!(status["serving"]["live"], 0, "{status}");
    let connections = json(&ctl(&socket, &["connections", "--json"]));
    let listed = connections["connections"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{connections}");
    assert_eq!(listed[0]["generation"], 1, "{connections}");
    let table = String::from_utf8_lossy(&ctl(&socket, &["status"]).stdout).into_owned();
    assert!(table.contains("live 1"), "{table}");
    drop(session);

    // Once generation 1 is gone its endpoint is too.
    let endpoint = std::path::PathBuf::from(format!("{}.1", socket.display()));
    let deadline = Instant::now() + SOON;
    while endpoint.exists() {
        assert!(Instant::now() < deadline, "{endpoint:?} left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        socket.with_extension("sock.2").exists(),
        "generation 2's endpoint"
    );
}
