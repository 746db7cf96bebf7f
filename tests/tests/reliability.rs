//! Reliability of `lifecycle-gateway` under load, faults and bad input
//! (issue 10): churn, descriptor exhaustion, idle hordes, bad bytes, crash
//! safety, a full disk, and the actors' races in a loop; the paced closing
//! of idle IMAP sessions (issue 15); and (issue 14) admission control (a
//! flood from one address, listener and rate caps), bounded memory of
//! sessions in DATA and the DATA deadlines; (issue 19) the memory of idle
//! connections.
//!
//! Every test runs the real binary (built in release mode through
//! [`lifecycle_tests::gateway_bin`]) with real sockets and signals, prints
//! the figures it saw on stderr (visible without `--nocapture`), and checks
//! exact counts so that a broken property fails the test. The tests take
//! turns (one lock): they load a 2-core machine on their own.
//!
//! `RELIABILITY_SCALE=0.1` scales the sizes down while iterating; the
//! committed default (1.0) runs the issue's sizes.

#[path = "reliability/admission.rs"]
mod admission;
#[path = "reliability/bad_bytes.rs"]
mod bad_bytes;
#[path = "reliability/churn.rs"]
mod churn;
#[path = "reliability/crash.rs"]
mod crash;
#[path = "reliability/deadlines.rs"]
mod deadlines;
#[path = "reliability/exhaustion.rs"]
mod exhaustion;
#[path = "reliability/full_disk.rs"]
mod full_disk;
#[path = "reliability/haproxy.rs"]
mod haproxy;
#[path = "reliability/hordes.rs"]
mod hordes;
#[path = "reliability/idle_memory.rs"]
mod idle_memory;
#[path = "reliability/memory.rs"]
mod memory;
#[path = "reliability/paced.rs"]
mod paced;
#[path = "reliability/races.rs"]
mod races;
#[path = "reliability/smtp.rs"]
mod smtp;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lifecycle_tests::{json_field, metric_samples, ChildGuard, GatewayProcess, ProcStats};
use nix::sys::signal::Signal;

/// The drain grace of [`graced_gateway`].
const DRAIN: Duration = Duration::from_secs(2);
/// The abort grace of [`graced_gateway`].
const ABORT: Duration = Duration::from_secs(1);

/// One test at a time: each one wants the machine's cores and descriptors.
static TURN: Mutex<()> = Mutex::new(());

/// Takes this test's turn.
fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` times `RELIABILITY_SCALE` (default 1), at least 1.
fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("RELIABILITY_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale).round() as usize).max(1)
}

/// The release gateway binary.
fn gateway() -> PathBuf {
    lifecycle_tests::gateway_bin().expect("build lifecycle-gateway")
}

/// The gateway with its default configuration.
fn default_gateway() -> GatewayProcess {
    GatewayProcess::builder(gateway())
        .start()
        .expect("start the gateway")
}

/// `field` of the process's `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
fn kib(stats: &ProcStats, field: &str) -> u64 {
    stats
        .status_kib(field)
        .unwrap_or_else(|e| panic!("{field}: {e}"))
}

/// The gateway, started with the graces [`DRAIN`] and [`ABORT`], for the
/// tests that time a SIGTERM against them.
fn graced_gateway() -> GatewayProcess {
    GatewayProcess::builder(gateway())
        .drain_grace(&format!("{}s", DRAIN.as_secs()))
        .abort_grace(&format!("{}s", ABORT.as_secs()))
        .start()
        .expect("start the gateway")
}

/// The exit status of `gw` within `limit`; panics with the log's tail if
/// it is still running then.
fn exited(gw: &mut GatewayProcess, limit: Duration) -> ExitStatus {
    gw.wait_exit(limit)
        .expect("wait")
        .unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", gw.log_tail(30)))
}

/// Sends SIGTERM and waits for the exit (see [`exited`]): the status and
/// how long after the signal it came.
fn terminate(gw: &mut GatewayProcess, limit: Duration) -> (ExitStatus, Duration) {
    let signalled = Instant::now();
    gw.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = exited(gw, limit);
    (status, signalled.elapsed())
}

/// The sum of every `lifecycle_connections` gauge in a metrics text.
fn live(metrics: &str) -> f64 {
    metric_samples(metrics, "lifecycle_connections")
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// Connections `gw` counts as live now.
fn live_now(gw: &GatewayProcess) -> usize {
    live(&gw.metrics().expect("metrics")) as usize
}

/// Sessions the log says were closed with `reason` (`draining`,
/// `aborted`, ...).
fn closed_for(gw: &GatewayProcess, reason: &str) -> usize {
    gw.count_logs(|l| {
        l.contains(r#""msg":"connection closed""#)
            && json_field(l, "reason").as_deref() == Some(reason)
    })
}

/// Prints a figure line, visible in a plain `cargo test` run.
fn figure(test: &str, text: &str) {
    lifecycle_tests::loud(&format!("[reliability::{test}] {text}"));
}

/// Checks the log for panics.
fn assert_no_panic(gw: &GatewayProcess) {
    let panics = gw.count_logs(|l| l.contains("panic"));
    assert_eq!(panics, 0, "the log mentions a panic:\n{}", gw.log_tail(50));
}

/// `key=N` in a `reliability-client` report line.
fn kv(line: &str, key: &str) -> u64 {
    let needle = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&needle)?.parse().ok())
        .unwrap_or_else(|| panic!("no {key}=N in {line:?}"))
}

/// The `reliability-client` child process, driven through its stdin and
/// stdout.
struct LoadClient {
    child: ChildGuard,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl LoadClient {
    fn spawn(args: &[String]) -> LoadClient {
        let mut child = ChildGuard::spawn(
            Command::new(env!("CARGO_BIN_EXE_reliability-client"))
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn reliability-client");
        let stdin = child.child_mut().stdin.take().expect("piped stdin");
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LoadClient {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to the client");
        self.stdin.flush().expect("flush to the client");
    }

    /// Sends a command that needs no answer to a client that may already
    /// have finished its work (and closed its input).
    fn tell(&mut self, command: &str) {
        let _ = writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush());
    }

    /// The next line starting with `prefix`, within `timeout`.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no `{prefix}` line from the client within {timeout:?}: {e}"),
            }
        }
    }

    /// Sends a command and returns the answer line starting with `prefix`.
    fn ask(&mut self, command: &str, prefix: &str, timeout: Duration) -> String {
        self.send(command);
        self.expect(prefix, timeout)
    }

    fn finish(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait_timeout(Duration::from_secs(30));
    }
}
