//! The real `lifecycle-gateway` binary under test: started on port 0 with a
//! JSON log on stderr, from which the tests learn the bound addresses and
//! follow the shutdown phases.

#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // shared by the test crates through `mod common`

pub mod ctl;
pub mod upgrading;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lifecycle_tests::ChildGuard;
use nix::sys::signal::Signal;

pub const BIN: &str = env!("CARGO_BIN_EXE_lifecycle-gateway");

/// Generous bound for things that should take milliseconds.
pub const SOON: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

pub struct Gateway {
    child: ChildGuard,
    pub dir: tempfile::TempDir,
    log: Arc<Log>,
    pub smtp: SocketAddr,
    pub imap: SocketAddr,
    pub http: SocketAddr,
    /// Every listener's bound address, by name, as logged.
    pub addrs: Vec<(String, SocketAddr)>,
}

impl Gateway {
    /// Starts the gateway with SMTP, IMAP and HTTP listeners on 127.0.0.1
    /// port 0 and the given `[shutdown]` graces; waits until it is ready.
    /// As root (CI) this is the privileged start: a root parent binds and
    /// passes the sockets to a child (`allow_root`, as the temporary spool
    /// belongs to root); otherwise the immediate mode.
    pub fn start(drain: &str, abort: &str) -> Gateway {
        Self::start_with(drain, abort, "")
    }

    /// [`start`](Self::start) with more keys for the `[smtp]` table.
    pub fn start_with(drain: &str, abort: &str, smtp: &str) -> Gateway {
        Self::start_with_lame_duck("0s", drain, abort, smtp)
    }

    /// [`start_with`](Self::start_with) and a `lame_duck`.
    pub fn start_with_lame_duck(lame_duck: &str, drain: &str, abort: &str, smtp: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"allow_root = true
spool_dir = "{spool}"
[shutdown]
lame_duck = "{lame_duck}"
drain_grace = "{drain}"
abort_grace = "{abort}"
[log]
format = "json"
level = "info"
[smtp]
hostname = "gw.test"
{smtp}
[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:0"
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:0"
[[listener]]
name = "http"
protocol = "http"
address = "127.0.0.1:0"
"#,
            spool = dir.path().join("spool").display()
        );
        Self::launch(dir, &config, &[])
    }

    /// Starts the binary on `config` (written to `dir/gateway.toml`, mode
    /// 0644) with `env` added, and waits until it is ready. Listener
    /// addresses are learnt from the log: see [`addr`](Self::addr).
    pub fn launch(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Self::spawn(dir, config, env);
        gw.wait_log(SOON, |l| l.contains(r#""msg":"ready""#))
            .unwrap_or_else(|| panic!("gateway not ready; log:\n{}", gw.log_text()));
        gw.learn_addresses();
        gw
    }

    /// Reads the listener addresses from the log lines so far.
    pub fn learn_addresses(&mut self) {
        for line in self.logs() {
            if !line.contains(r#""msg":"listener bound""#)
                && !line.contains(r#""msg":"listener taken""#)
            {
                continue;
            }
            let addr: SocketAddr = field(&line, "address").unwrap().parse().unwrap();
            let name = field(&line, "listener").unwrap();
            match name.as_str() {
                "smtp" => self.smtp = addr,
                "imap" => self.imap = addr,
                "http" => self.http = addr,
                _ => {}
            }
            if !self.addrs.iter().any(|(n, _)| *n == name) {
                self.addrs.push((name, addr));
            }
        }
    }

    /// Starts the binary like [`launch`](Self::launch) without waiting for
    /// anything.
    pub fn spawn(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        use std::os::unix::fs::PermissionsExt;
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn_command(dir, &mut command)
    }

    /// Starts `command` (a gateway, its stderr piped) and follows its log.
    pub fn spawn_command(dir: tempfile::TempDir, command: &mut Command) -> Gateway {
        // A binary copied a moment ago may still be open for writing in a
        // child that another test thread forked meanwhile (until its exec
        // closes it): exec fails with ETXTBSY for that moment.
        let mut tries = 0;
        let mut child = loop {
            match ChildGuard::spawn(command) {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                spawned => break spawned.unwrap(),
            }
        };
        let stderr = child.child_mut().stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        Gateway {
            child,
            dir,
            log,
            smtp: "0.0.0.0:0".parse().unwrap(),
            imap: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            addrs: Vec::new(),
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name} in the log"))
    }

    /// The pid of the process started by the test (the parent in
    /// privileged mode).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid of the process that serves (the child in privileged mode).
    pub fn service_pid(&self) -> u32 {
        let line = self
            .wait_log(SOON, |l| {
                l.contains(r#""msg":"starting""#) && !l.contains(r#""mode":"privileged""#)
            })
            .expect("no start line of the serving process");
        number(&line, "pid").unwrap().try_into().unwrap()
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Complete messages in the spool.
    pub fn messages(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.spool_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        out.sort();
        out
    }

    pub fn temp_files(&self) -> usize {
        std::fs::read_dir(self.spool_dir().join("tmp"))
            .unwrap()
            .count()
    }

    pub fn logs(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.logs().join("\n")
    }

    /// Waits for a log line matching `pred`.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The log line of shutdown phase `phase`, waiting for it.
    pub fn wait_phase(&self, phase: &str, timeout: Duration) -> Option<String> {
        let needle = format!(r#""phase":"{phase}""#);
        self.wait_log(timeout, |l| {
            l.contains(r#""msg":"phase""#) && l.contains(&needle)
        })
    }

    pub fn signal(&self, sig: Signal) {
        self.child.signal(sig).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(timeout).unwrap()
    }

    /// `/metrics` fetched with a plain HTTP/1.0 request.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Status and body of `GET path` (HTTP/1.0, no client library).
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.http).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_owned())
    }
}

// Log lines and metrics are read with the end-to-end test package's
// helpers: `field` (a JSON string value), `number` (a JSON integer) and
// `sample` (a Prometheus sample whose labels include the given ones).
#[allow(unused_imports)] // each test binary uses its own subset
pub use lifecycle_tests::{json_field as field, json_number as number, metric_value as sample};

/// A line-oriented client (SMTP or IMAP) with read timeouts.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// One line, "" at end of input (or when the connection was reset).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(_) => l,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// One whole SMTP reply (multi-line replies joined).
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line();
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply();
        assert!(r.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }
}

/// Counts the non-overlapping occurrences of `needle` in `hay`.
pub fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// `openssl s_client` against `addr`, sending `say` once connected and
/// reading until the server closes: the transcript (handshake, served
/// certificate, what the server said).
pub fn s_client(addr: std::net::SocketAddr, starttls: Option<&str>, say: &str) -> String {
    use std::io::Write;
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "gw.test",
        "-crlf",
        "-ign_eof",
    ]);
    if let Some(proto) = starttls {
        cmd.args(["-starttls", proto]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Give the handshake a moment before the command (a bound, not a speed check).
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(say.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The PEM certificate a `s_client` transcript shows as served.
pub fn served_pem(transcript: &str) -> Option<String> {
    let start = transcript.find("-----BEGIN CERTIFICATE-----")?;
    let end = transcript[start..].find("-----END CERTIFICATE-----")? + start;
    Some(transcript[start..end].replace('\r', ""))
}
