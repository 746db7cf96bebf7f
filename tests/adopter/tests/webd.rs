//! `webd`, an actix-web app served by the lifecycle: its connections are
//! counted, a request in flight finishes through the drain, an idle
//! keep-alive connection is closed, and it exits 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::{Program, GENEROUS};

const WEBD: &str = env!("CARGO_BIN_EXE_webd");

/// Sends one GET on `stream` without reading the answer.
fn send_get(stream: &TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
    (&*stream).write_all(request.as_bytes()).unwrap();
}

/// Reads one response (with Content-Length): status and body.
fn read_response(stream: &TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (code, String::from_utf8(body).unwrap())
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GENEROUS)).unwrap();
    s
}

/// `/metrics` on a fresh connection (which counts itself).
fn metrics(addr: &str) -> String {
    let s = connect(addr);
    send_get(&s, "/metrics");
    read_response(&s).1
}

fn value(metrics: &str, prefix: &str) -> String {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .trim()
        .to_owned()
}

#[test]
fn connections_are_counted_drained_and_closed_then_exit_0() {
    let mut webd = Program::start(WEBD, &["127.0.0.1:0"]);
    let line = webd.line();
    let addr = line
        .strip_prefix("listening ")
        .expect("listening ADDR")
        .to_owned();

    let idle = connect(&addr);
    send_get(&idle, "/");
    assert_eq!(read_response(&idle), (200, "hello\n".to_owned()));
    let gauge = r#"lifecycle_connections{listener="web",protocol="http"} "#;
    assert_eq!(
        value(&metrics(&addr), gauge),
        "2",
        "the idle one and the scrape"
    );

    // A request in flight: wait until the app is inside it.
    let busy = connect(&addr);
    send_get(&busy, "/slow");
    let deadline = Instant::now() + GENEROUS;
    while value(&metrics(&addr), "slow_in_flight ") != "1" {
        assert!(Instant::now() < deadline, "/slow never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    webd.sigterm();
    // The request in flight is answered; the idle keep-alive one is closed.
    assert_eq!(
        read_response(&busy),
        (200, "finished after the drain began\n".to_owned())
    );
    let mut rest = Vec::new();
    (&idle)
        .read_to_end(&mut rest)
        .expect("closed by the server");
    assert!(rest.is_empty(), "{rest:?}");
    let (status, stderr) = webd.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
