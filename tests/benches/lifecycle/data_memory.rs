//! Memory of a session in DATA (issue 14): resident memory of the
//! gateway's serving process per session while N sessions are each in the
//! middle of a large message, against the same N sessions idle (greeted,
//! nothing sent).
//!
//! The sessions are driven by the `reliability-client` binary of this
//! package (its `data` mode is the one the reliability memory test uses;
//! its `hold` mode holds greeted connections), each figure on a fresh
//! gateway so that neither state inherits the other's heap.

use crate::gateway::{Gateway, Mode};
use crate::Res;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A hang bound for one step of the load client (not a target).
const PATIENCE: Duration = Duration::from_secs(300);
/// Pause between looks at the spool's temporary files.
const POLL: Duration = Duration::from_millis(20);
/// No admission limit: the N sessions come from one address.
const NO_LIMITS: &str = "[limits]\nmax_connections = 0\nmax_per_address = 0\n";

/// Bytes of resident memory per session, one figure of each state.
pub(crate) struct PerSession {
    /// N sessions each `size` bytes into DATA, no final dot yet.
    pub(crate) in_data: f64,
    /// N sessions greeted and silent.
    pub(crate) idle: f64,
}

/// One repetition: a gateway with `n` idle sessions, then a fresh one with
/// `n` sessions each `size` bytes into DATA (all of them then finished
/// and checked as acknowledged).
pub(crate) fn per_session(bin: &Path, dir: &Path, n: usize, size: usize) -> Res<PerSession> {
    let idle = {
        let run = dir.join("idle");
        std::fs::create_dir(&run)?;
        let gw = start(bin, &run)?;
        let before = rss_kib(&gw)?;
        let mut client = ReliabilityClient::spawn(&["hold".into(), format!("{}={n}", gw.smtp)])?;
        let held = client.expect("held ")?;
        expect_count(&held, "connected", n)?;
        client.send("busy 60000")?;
        let busy = client.expect("busy ")?;
        expect_count(&busy, "greeted", n)?;
        let with = rss_kib(&gw)?;
        client.send("exit")?;
        client.wait()?;
        gw.stop()?;
        eprintln!("data memory: {n} idle sessions: VmRSS {before} -> {with} kiB");
        per(before, with, n)
    };
    let in_data = {
        let run = dir.join("data");
        std::fs::create_dir(&run)?;
        let gw = start(bin, &run)?;
        let before = rss_kib(&gw)?;
        let mut client = ReliabilityClient::spawn(&[
            "data".into(),
            gw.smtp.to_string(),
            n.to_string(),
            size.to_string(),
        ])?;
        let mid = client.expect("mid ")?;
        expect_count(&mid, "sent", n)?;
        // The bodies have left the client; most of each must have reached
        // the spool (not just the kernel's buffers) for the figure to be
        // "mid-transfer".
        let tmp = run.join("spool").join("tmp");
        let want = (n * size) as u64 * 3 / 4;
        let waited = Instant::now();
        while tmp_bytes(&tmp) < want {
            if waited.elapsed() > PATIENCE {
                return Err(format!(
                    "{} bytes in {} after {PATIENCE:?}, expected {want}",
                    tmp_bytes(&tmp),
                    tmp.display()
                )
                .into());
            }
            std::thread::sleep(POLL);
        }
        let with = rss_kib(&gw)?;
        client.send("finish")?;
        let result = client.expect("result ")?;
        expect_count(&result, "acked", n)?;
        client.wait()?;
        gw.stop()?;
        eprintln!(
            "data memory: {n} sessions {} KiB into DATA: VmRSS {before} -> {with} kiB",
            size >> 10
        );
        per(before, with, n)
    };
    Ok(PerSession { in_data, idle })
}

fn start(bin: &Path, run: &Path) -> Res<Gateway> {
    let spool = run.join("spool");
    Ok(Gateway::start_with(bin, run, &spool, Mode::Immediate, NO_LIMITS)?.0)
}

/// Resident memory of the serving process, in KiB: the gateway's child
/// when it has one (as root the gateway always serves from a child, root's
/// own with `allow_root`), else the gateway itself.
fn rss_kib(gw: &Gateway) -> Res<u64> {
    let pid = gw.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let serving = match children.split_whitespace().collect::<Vec<_>>().as_slice() {
        [] => pid,
        [child] => child.parse()?,
        more => return Err(format!("the gateway {pid} has several children: {more:?}").into()),
    };
    lifecycle_tests::ProcStats::new(serving)
        .status_kib("VmRSS")
        .map_err(|e| format!("no VmRSS in /proc/{serving}/status: {e}").into())
}

fn per(before_kib: u64, with_kib: u64, n: usize) -> f64 {
    with_kib.saturating_sub(before_kib) as f64 * 1024.0 / n as f64
}

/// Bytes in the spool's temporary files.
fn tmp_bytes(tmp: &Path) -> u64 {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checks `key=n` in a report line of the client.
fn expect_count(line: &str, key: &str, n: usize) -> Res<()> {
    let needle = format!("{key}=");
    let got = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&needle)?.parse::<usize>().ok());
    match got {
        Some(got) if got == n => Ok(()),
        _ => Err(format!("expected {key}={n} from reliability-client, got {line:?}").into()),
    }
}

/// The `reliability-client` child process, driven through stdin/stdout.
struct ReliabilityClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ReliabilityClient {
    fn spawn(args: &[String]) -> Res<Self> {
        let program = env!("CARGO_BIN_EXE_reliability-client");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("reliability-client: no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    /// The next line starting with `prefix` (others are skipped).
    fn expect(&mut self, prefix: &str) -> Res<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                format!("reliability-client: no line {prefix:?} within {PATIENCE:?} (or it exited)")
            })?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    fn send(&mut self, line: &str) -> Res<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or("reliability-client: stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes its stdin and waits for a successful exit.
    fn wait(mut self) -> Res<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("reliability-client exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for ReliabilityClient {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
