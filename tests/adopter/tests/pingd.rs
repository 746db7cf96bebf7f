//! `pingd`, a two-listener line server written against the public API:
//! ready only once both listeners serve, gauges per listener, a request in
//! flight finishes through the drain while idle clients are told at once,
//! exit 0; a listener whose socket is missing fails the start by name.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::Program;

const PINGD: &str = env!("CARGO_BIN_EXE_pingd");

struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let writer = TcpStream::connect(addr).expect("connect");
        writer.set_read_timeout(Some(common::GENEROUS)).unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Client { writer, reader }
    }
    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        line.trim_end().to_owned()
    }
    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }
}

#[test]
fn two_listeners_serve_count_drain_and_exit_0() {
    let mut pingd = Program::start(PINGD, &["a=127.0.0.1:0", "b=127.0.0.1:0"]);
    let mut addrs = Vec::new();
    loop {
        let line = pingd.line();
        if line == "ready" {
            break;
        }
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("listening"), "{line:?}");
        addrs.push(words.nth(1).expect("an address").to_owned());
    }
    assert_eq!(addrs.len(), 2, "ready only once both listeners serve");
    let (mut idle, mut busy) = (Client::connect(&addrs[0]), Client::connect(&addrs[1]));
    assert_eq!(idle.ask("PING"), "PONG");
    assert_eq!(busy.ask("PING"), "PONG");

    // One connection on each listener, counted apart.
    idle.send("METRICS");
    let mut gauges = Vec::new();
    loop {
        match idle.line() {
            end if end == "END" => break,
            line => gauges.push(line),
        }
    }
    gauges.sort();
    assert_eq!(
        gauges,
        [
            r#"lifecycle_connections{listener="a",protocol="ping"} 1"#,
            r#"lifecycle_connections{listener="b",protocol="ping"} 1"#,
        ]
    );

    // A request in flight when SIGTERM comes finishes; the idle client is
    // told at once; then the busy one too; exit 0.
    assert_eq!(busy.ask("SLOW"), "SLOW STARTED");
    pingd.sigterm();
    assert_eq!(idle.line(), "BYE shutting down");
    assert_eq!(busy.line(), "SLOW DONE");
    assert_eq!(busy.line(), "BYE shutting down");
    let (status, stderr) = pingd.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_listener_whose_socket_is_missing_fails_the_start_by_name() {
    let mut pingd = Program::start(
        PINGD,
        &["a=127.0.0.1:0", "--serve", "a", "--serve", "missing"],
    );
    let mut out = Vec::new();
    loop {
        match pingd.line() {
            end if end.is_empty() => break,
            line => out.push(line),
        }
    }
    assert!(!out.iter().any(|l| l == "ready"), "{out:?}");
    let (status, stderr) = pingd.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            r#"pingd: listener "missing": no listener named "missing" in the inventory (known: a)"#
        ),
        "{stderr}"
    );
}
