//! The examples as real processes: each is built with cargo, started on
//! port 0 (the address argument), driven by real TCP clients and stopped
//! with real signals; its exit status and what clients saw are checked.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lifecycle_tests::{ChildGuard, LogFollower};
use nix::sys::signal::Signal;

/// A bound on waits, far above what any step needs: never a speed claim.
const GENEROUS: Duration = Duration::from_secs(30);

/// Builds example `name` (next to free after `cargo test --workspace`) and
/// returns its executable, read from cargo's JSON messages. Once per name.
fn build_example(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .entry(name.to_owned())
        .or_insert_with(|| cargo_build(name))
        .clone()
}

fn cargo_build(name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        // The `test` profile over the whole workspace: the profile and
        // feature set `cargo test --workspace` built everything with, so
        // this reuses that build instead of compiling the tree again.
        .args([
            "build",
            "--profile",
            "test",
            "--workspace",
            "--example",
            name,
        ])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo build --example {name} failed:\n{errors}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let target = format!(r#""kind":["example"],"crate_types":["bin"],"name":"{name}""#);
    stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#) && l.contains(&target))
        .find_map(|l| json_string_after(l, r#""executable":""#))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no executable for example {name} in cargo's output"))
}

/// The JSON string value that starts right after `key` (simple escapes only).
fn json_string_after(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

/// A running example (killed and reaped when dropped): its process,
/// address and everything it logged.
struct Example {
    child: ChildGuard,
    addr: SocketAddr,
    log: LogFollower,
}

impl Example {
    fn start(name: &str) -> Example {
        Self::start_with(name, |_| {})
    }

    fn start_with(name: &str, setup: impl FnOnce(&mut Command)) -> Example {
        Self::start_program(name, &build_example(name), setup)
    }

    /// Starts `program`, a build (or a copy) of example `name`.
    fn start_program(name: &str, program: &Path, setup: impl FnOnce(&mut Command)) -> Example {
        let mut command = Command::new(program);
        command
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        setup(&mut command);
        let mut child = ChildGuard::spawn_fresh(&mut command).expect("the example starts");
        let log = LogFollower::new(child.child_mut().stderr.take().expect("piped stderr"));
        let mut first = String::new();
        BufReader::new(child.child_mut().stdout.take().expect("piped stdout"))
            .read_line(&mut first)
            .expect("stdout readable");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            drop(child);
            panic!(
                "{name} printed {first:?}, not `listening on ADDR`; log:\n{}",
                log.text()
            );
        };
        Example { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.text()
    }

    fn signal(&self, signal: Signal) {
        self.child
            .signal(signal)
            .expect("the example is alive to take the signal");
    }

    /// Waits until a log line contains `needle`.
    fn wait_log(&self, needle: &str) {
        self.log
            .wait(GENEROUS, |l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{}", self.log()));
    }

    /// Waits for the exit, then for the end of the log (the reader thread
    /// may still hold the last lines when the exit is seen).
    fn wait_exit(&mut self) -> ExitStatus {
        let status = self
            .child
            .wait_timeout(GENEROUS)
            .expect("waitable")
            .unwrap_or_else(|| panic!("still running; log:\n{}", self.log()));
        assert!(self.log.wait_end(GENEROUS), "the log did not end");
        status
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(GENEROUS)).expect("timeout");
    stream
}

// ---- minimal ----

#[test]
fn minimal_echoes_then_says_bye_and_exits_0_on_sigterm() {
    let mut echo = Example::start("minimal");
    let client = connect(echo.addr);
    let mut lines = BufReader::new(client.try_clone().expect("clone"));
    (&client).write_all(b"hello\n").expect("write");
    let mut line = String::new();
    lines.read_line(&mut line).expect("echo");
    assert_eq!(line, "hello\n");

    // The client stays connected and idle: draining says goodbye and closes.
    echo.signal(Signal::SIGTERM);
    line.clear();
    lines.read_line(&mut line).expect("goodbye");
    assert_eq!(line, "bye: shutting down\n");
    line.clear();
    assert_eq!(
        lines.read_line(&mut line).expect("eof"),
        0,
        "closed after bye"
    );

    let status = echo.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", echo.log());
    let log = echo.log();
    assert!(log.contains("phase: stopped"), "log:\n{log}");
    assert!(log.contains("left_open: 0"), "log:\n{log}");
}

#[test]
fn minimal_idle_stops_on_sigint_with_status_0() {
    let mut echo = Example::start("minimal");
    echo.signal(Signal::SIGINT);
    let status = echo.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", echo.log());
    assert!(
        echo.log().contains("trigger: SIGINT"),
        "log:\n{}",
        echo.log()
    );
}

/// The mode `Handoff::detect` picked is the one the user id calls for:
/// privileged as root, immediate otherwise; as root the example is also run
/// as `nobody` to cover the immediate mode.
#[test]
fn minimal_reports_its_mode_and_echoes_as_any_user() {
    let root = nix::unistd::geteuid().is_root();
    let mut runs = vec![(root, Example::start("minimal"))];
    // `nobody` may be unable to search the checkout (under a `0700` home
    // directory, as /root is): it runs a copy installed where it may, as a
    // user would install the program.
    let mut installed = None;
    if root {
        let user = lifecycle_tests::ServiceUser::nobody().expect("user nobody");
        let copy = installed.insert(
            user.install(&build_example("minimal"))
                .expect("the example installs"),
        );
        let nobody = Example::start_program("minimal", copy.path(), |c| {
            user.drop_privileges(c);
            c.current_dir(copy.dir());
        });
        runs.push((false, nobody));
    } else {
        println!("SKIP (part): not root, the privileged-mode run is not possible");
    }
    for (as_root, mut echo) in runs {
        let mode = if as_root { "privileged" } else { "immediate" };
        echo.wait_log(&format!("mode: {mode}"));
        let client = connect(echo.addr);
        (&client).write_all(b"ping\n").expect("write");
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).expect("echo");
        assert_eq!(line, "ping\n", "{mode}");
        drop(client);
        echo.signal(Signal::SIGTERM);
        assert_eq!(
            echo.wait_exit().code(),
            Some(0),
            "{mode}; log:\n{}",
            echo.log()
        );
    }
}

// ---- actix_web_embed ----

/// One HTTP/1.1 GET on `stream`; returns status and body (needs Content-Length).
fn get(stream: &TcpStream, path: &str, keep_alive: bool) -> (u16, String) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n");
    let mut writer = stream;
    writer.write_all(request.as_bytes()).expect("send request");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        if header == "\r\n" || header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("a Content-Length header")];
    reader.read_exact(&mut body).expect("body");
    (status, String::from_utf8(body).expect("utf-8 body"))
}

/// The connections gauge, read with a fresh connection (which counts itself).
fn http_connections(addr: SocketAddr) -> f64 {
    let (status, body) = get(&connect(addr), "/metrics", false);
    assert_eq!(status, 200);
    let prefix = r#"lifecycle_connections{listener="http",protocol="http"} "#;
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{body}"))
}

fn wait_connections(addr: SocketAddr, want: f64) {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let got = http_connections(addr);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gauge stuck at {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn actix_web_embed_tracks_keep_alive_connections() {
    let mut web = Example::start("actix_web_embed");
    let held = connect(web.addr);
    let (status, body) = get(&held, "/", true);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from an existing actix-web app\n")
    );
    assert_eq!(get(&held, "/readyz", true), (200, "ready\n".to_owned()));

    // The held connection plus the scrape's own.
    assert_eq!(http_connections(web.addr), 2.0);
    drop(held);
    // Only the scrape's own connection is left.
    wait_connections(web.addr, 1.0);

    web.signal(Signal::SIGTERM);
    assert_eq!(web.wait_exit().code(), Some(0), "log:\n{}", web.log());
}

#[test]
fn actix_web_embed_turns_unready_then_stops_gracefully_with_0() {
    let mut web = Example::start("actix_web_embed");
    let held = connect(web.addr);
    assert_eq!(get(&held, "/", true).0, 200);

    web.signal(Signal::SIGTERM);
    web.wait_log("phase: lame_duck");
    // Within the example's lame duck (1 s) the open connection is still
    // served, and /readyz says 503.
    assert_eq!(
        get(&held, "/readyz", true),
        (503, "shutting down\n".to_owned())
    );

    // Then actix-web stops and closes the idle keep-alive connection.
    let mut rest = Vec::new();
    (&held)
        .read_to_end(&mut rest)
        .expect("closed by the server");
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
    assert_eq!(web.wait_exit().code(), Some(0), "log:\n{}", web.log());
    let log = web.log();
    assert!(log.contains("phase: stopped"), "log:\n{log}");
    assert!(log.contains("left_open: 0"), "log:\n{log}");
}
