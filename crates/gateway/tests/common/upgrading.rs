//! Shared by the upgrade tests: a gateway started from a copy of the binary
//! kept in a temporary directory (so a test can replace it) with a TLS
//! pair, the upgrade log helpers, and a bounded SMTP load client that
//! classifies every failure.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_tests::{install_program, loud, read_reply, GatewayConfig, ServiceUser};
use nix::sys::signal::Signal;

use super::{served_pem, Gateway, BIN, SOON};

pub const NOBODY: u32 = 65534;

/// Makes `cmd` run as `nobody` (the helper every test uses: `setgroups([])`,
/// `setgid`, `setuid`).
pub fn as_nobody(cmd: &mut Command) {
    ServiceUser::nobody().unwrap().drop_privileges(cmd);
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `[shutdown] drain_grace` (default 2 s).
    pub drain_grace: &'static str,
}

pub fn write_pair(dir: &Path, cert: &Path, key: &Path) -> String {
    let pair = rcgen::generate_simple_self_signed(vec!["gw.test".into()]).unwrap();
    // Rotation as an operator does it: new files renamed over the old.
    let (tc, tk) = (dir.join("cert.new"), dir.join("key.new"));
    std::fs::write(&tc, pair.cert.pem()).unwrap();
    std::fs::set_permissions(&tc, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&tk, pair.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&tk, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tc, cert).unwrap();
    std::fs::rename(&tk, key).unwrap();
    served_pem(&pair.cert.pem()).unwrap()
}

impl Setup {
    pub fn new() -> (Setup, String) {
        let dir = super::service_dir();
        let bin = dir.path().join("lifecycle-gateway");
        install_program(BIN.as_ref(), &bin).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let pem = write_pair(dir.path(), &cert, &key);
        (
            Setup {
                dir,
                bin,
                cert,
                key,
                drain_grace: "2s",
            },
            pem,
        )
    }

    pub fn start(self) -> Gateway {
        self.launch(r#"user = "nobody""#, |_| {}, "service ready")
    }

    /// Starts the privileged gateway as `nobody` with a control socket at
    /// `run/control.sock` in the test's directory; the gateway and the
    /// socket's path.
    pub fn start_controlled(self) -> (Gateway, PathBuf) {
        let socket = self.dir.path().join("run/control.sock");
        let head = format!(
            "user = \"nobody\"\ncontrol_socket = \"{}\"",
            socket.display()
        );
        (self.launch(&head, |_| {}, "service ready"), socket)
    }

    /// Starts the binary with `head` on top of the config, `edit` applied to
    /// the command; waits for the log message `ready`.
    pub fn launch(self, head: &str, edit: impl FnOnce(&mut Command), ready: &str) -> Gateway {
        let mut gw = self.spawn(head, edit);
        let needle = format!(r#""msg":"{ready}""#);
        gw.wait_log(SOON, |l| l.contains(&needle))
            .unwrap_or_else(|| panic!("not ready:\n{}", gw.log_text()));
        gw.learn_addresses();
        gw
    }

    /// [`launch`](Self::launch) without waiting for anything.
    pub fn spawn(self, head: &str, edit: impl FnOnce(&mut Command)) -> Gateway {
        let path = GatewayConfig::new(self.dir.path().join("spool"))
            .head(head)
            .drain_grace(self.drain_grace)
            .abort_grace("1s")
            .tls(&self.cert, &self.key)
            .no_listeners()
            .listener("smtp", "smtp", "127.0.0.1:0", "backlog = 4096")
            .listener("smtps", "smtp", "127.0.0.1:0", r#"tls = "implicit""#)
            .listener("imap", "imap", "127.0.0.1:0", "")
            .listener("http", "http", "127.0.0.1:0", "")
            .write(self.dir.path())
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        edit(&mut cmd);
        Gateway::spawn_command(self.dir, &mut cmd)
    }
}

/// Kills the listed processes when the test ends (successors are not the
/// test's children).
pub struct Reaper(pub Vec<i32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// Whether process `pid` is gone (reparented successors are reaped by
/// init; a zombie counts as gone).
/// Puts a shell script with `body` (after `#!/bin/sh`) at `bin` as an
/// operator installs a new binary: written beside it, made executable,
/// renamed over it. The next upgrade runs it.
pub fn replace_with_script(bin: &Path, body: &str) {
    let staged = bin.with_extension("new");
    std::fs::write(&staged, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, bin).unwrap();
}

/// Copies the gateway binary to `dir/real-gateway` and replaces `bin` by a
/// script that runs that copy with `LIFECYCLE_GATEWAY_TEST_READY_DELAY`
/// set to `delay`: the next generation accepts at once but reports ready
/// only after `delay`.
pub fn replace_with_slow_gateway(dir: &Path, bin: &Path, delay: &str) {
    let real = dir.join("real-gateway");
    install_program(BIN.as_ref(), &real).unwrap();
    replace_with_script(
        bin,
        &format!(
            "LIFECYCLE_GATEWAY_TEST_READY_DELAY={delay} exec '{}' \"$@\"",
            real.display()
        ),
    );
}

pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Counts log lines with this message.
pub fn count(gw: &Gateway, msg: &str) -> usize {
    let needle = format!(r#""msg":"{msg}""#);
    gw.logs().iter().filter(|l| l.contains(&needle)).count()
}

/// Sends `signal` to the parent and waits for the upgrade's outcome line
/// (`upgrade succeeded` or `upgrade failed`); returns it.
pub fn upgrade(gw: &Gateway, signal: Signal) -> String {
    upgrade_pid(gw, i32::try_from(gw.pid()).unwrap(), signal)
}

/// [`upgrade`] with the signal sent to `pid`.
pub fn upgrade_pid(gw: &Gateway, pid: i32, signal: Signal) -> String {
    let before = count(gw, "upgrade succeeded") + count(gw, "upgrade failed");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outcomes: Vec<String> = gw
            .logs()
            .into_iter()
            .filter(|l| {
                l.contains(r#""msg":"upgrade succeeded""#)
                    || l.contains(r#""msg":"upgrade failed""#)
            })
            .collect();
        if outcomes.len() > before {
            return outcomes[before].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no upgrade outcome:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
pub struct LoadStats {
    pub accepted: AtomicU64,
    pub drained: AtomicU64,
    pub refused: AtomicU64,
    pub reset: AtomicU64,
    pub other: AtomicU64,
}

pub enum Outcome {
    /// `250` for DATA: the message is in the spool.
    Accepted,
    /// `421`: the session's process drains; reconnect and retry.
    Drained,
}

pub struct Session {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

pub fn open(addr: SocketAddr) -> std::io::Result<Result<Session, Outcome>> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(SOON))?;
    let mut r = BufReader::new(s.try_clone()?);
    let greeting = read_reply(&mut r)?;
    if greeting.starts_with("421") {
        return Ok(Err(Outcome::Drained));
    }
    let mut w = s;
    w.write_all(b"EHLO load.example\r\n")?;
    let ehlo = read_reply(&mut r)?;
    if ehlo.starts_with("421") {
        return Ok(Err(Outcome::Drained));
    }
    Ok(Ok(Session { r, w }))
}

pub fn send(s: &mut Session, token: &str) -> std::io::Result<Outcome> {
    s.w.write_all(b"MAIL FROM:<load@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n")?;
    for expect in ["250", "250", "354"] {
        let r = read_reply(&mut s.r)?;
        if r.starts_with("421") {
            return Ok(Outcome::Drained);
        }
        if !r.starts_with(expect) {
            return Err(std::io::Error::other(format!(
                "expected {expect}, got {r:?}"
            )));
        }
    }
    s.w.write_all(format!("Subject: load\r\n\r\n{token}\r\n.\r\n").as_bytes())?;
    let r = read_reply(&mut s.r)?;
    if r.starts_with("250") {
        Ok(Outcome::Accepted)
    } else if r.starts_with("421") {
        Ok(Outcome::Drained)
    } else {
        Err(std::io::Error::other(format!("DATA answered {r:?}")))
    }
}

pub fn classify(e: &std::io::Error, stats: &LoadStats, what: &str) {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => stats.refused.fetch_add(1, Ordering::Relaxed),
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof => {
            stats.reset.fetch_add(1, Ordering::Relaxed)
        }
        _ => stats.other.fetch_add(1, Ordering::Relaxed),
    };
    loud(&format!("load client: {what}: {e}"));
}

/// One load thread: sessions of up to 10 messages each until `stop`.
pub fn load(
    addr: SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    accepted: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut session = match open(addr) {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                stats.drained.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                classify(&e, &stats, "connect");
                continue;
            }
        };
        for _ in 0..10 {
            let token = format!("load-token-{id}-{n}-end");
            match send(&mut session, &token) {
                Ok(Outcome::Accepted) => {
                    n += 1;
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    accepted.lock().unwrap().push(token);
                }
                Ok(Outcome::Drained) => {
                    stats.drained.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    // The token may or may not be stored; it was not acknowledged.
                    n += 1;
                    classify(&e, &stats, "transaction");
                    break;
                }
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let _ = session.w.write_all(b"QUIT\r\n");
        let _ = read_reply(&mut session.r);
    }
}
