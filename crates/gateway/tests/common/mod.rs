//! The real `lifecycle-gateway` binary under test: started on port 0 with a
//! JSON log on stderr, from which the tests learn the bound addresses and
//! follow the shutdown phases.

#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // shared by the test crates through `mod common`

pub mod ctl;
pub mod upgrading;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use lifecycle_tests::{http_get, GatewayConfig, GatewayProcess};
use nix::sys::signal::Signal;

pub const BIN: &str = env!("CARGO_BIN_EXE_lifecycle-gateway");

/// Generous bound for things that should take milliseconds.
pub const SOON: Duration = Duration::from_secs(20);

/// A temporary directory every user may traverse, with a `spool` that
/// `nobody` owns: for a gateway whose service runs as `nobody`.
pub fn service_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let nobody = lifecycle_tests::ServiceUser::nobody().unwrap();
    nix::unistd::chown(&spool, Some(nobody.uid()), Some(nobody.gid())).unwrap();
    dir
}

/// The gateway under test: a [`GatewayProcess`] whose helpers panic
/// instead of returning errors, and whose addresses are public fields.
pub struct Gateway {
    process: GatewayProcess,
    pub smtp: SocketAddr,
    pub imap: SocketAddr,
    pub http: SocketAddr,
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
        let config = GatewayConfig::new(dir.path().join("spool"))
            .head("allow_root = true")
            .lame_duck(lame_duck)
            .drain_grace(drain)
            .abort_grace(abort)
            .smtp(smtp);
        Self::launch(dir, &config.text(), &[])
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
        self.process.learn_addresses().unwrap();
        (self.smtp, self.imap, self.http) =
            (self.process.smtp, self.process.imap, self.process.http);
    }

    /// Starts the binary like [`launch`](Self::launch) without waiting for
    /// anything.
    pub fn spawn(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        use std::os::unix::fs::PermissionsExt;
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut command = lifecycle_tests::gateway_command(BIN.as_ref(), &config_path, dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        Self::spawn_command(dir, &mut command)
    }

    /// Starts `command` (a gateway, its stderr piped) and follows its log.
    pub fn spawn_command(dir: tempfile::TempDir, command: &mut Command) -> Gateway {
        let process = GatewayProcess::spawn_command(command, dir).unwrap();
        Gateway {
            smtp: process.smtp,
            imap: process.imap,
            http: process.http,
            process,
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.process
            .addr(name)
            .unwrap_or_else(|| panic!("no listener {name} in the log"))
    }

    /// The test's temporary directory (config, spool).
    pub fn dir(&self) -> &Path {
        self.process.dir()
    }

    /// The pid of the process started by the test (the parent in
    /// privileged mode).
    pub fn pid(&self) -> u32 {
        self.process.pid()
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
        self.dir().join("spool")
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
        self.process.logs()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Waits for a log line matching `pred`; `None` at once when the log
    /// has ended (the gateway exited) without one.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.process.wait_log(timeout, pred)
    }

    /// The log line of shutdown phase `phase`, waiting for it.
    pub fn wait_phase(&self, phase: &str, timeout: Duration) -> Option<String> {
        self.process.wait_phase(phase, timeout)
    }

    pub fn signal(&self, sig: Signal) {
        self.process.signal(sig).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).unwrap()
    }

    /// Waits at most `timeout` for the end of the log (every process that
    /// holds the pipe exited) and every line read: after an exit, the
    /// reader thread may still hold the last lines; false on timeout.
    pub fn wait_log_end(&self, timeout: Duration) -> bool {
        self.process.wait_log_end(timeout)
    }

    /// `/metrics` fetched with a plain HTTP/1.0 request.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }
    /// Waits (at most [`SOON`]) for `lifecycle_upgrades_total{result="failed"}`
    /// to be 1, asserts that it is, and returns the `/metrics` text.
    pub fn assert_failed_upgrade_counted(&self) -> String {
        let deadline = Instant::now() + SOON;
        let metrics = loop {
            let m = self.metrics();
            let failed = sample(&m, "lifecycle_upgrades_total", &[("result", "failed")]);
            if failed == Some(1.0) || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let failed = sample(
            &metrics,
            "lifecycle_upgrades_total",
            &[("result", "failed")],
        );
        assert_eq!(failed, Some(1.0), "{metrics}");
        metrics
    }

    /// Status and body of `GET path` (HTTP/1.0, no client library).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path, SOON).unwrap()
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
