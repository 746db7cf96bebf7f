//! Zero-downtime upgrades end to end (as root; skipped with a printed
//! reason otherwise): the root parent re-execs a copy of the binary kept in
//! a temporary directory (so a test can replace it), on SIGHUP/SIGUSR2.
//! Under load nothing is refused or lost; a rotated certificate is served
//! after the next upgrade; a binary that exits at start-up fails the upgrade
//! cleanly while the old child serves on; an idle IMAP client of the old
//! child is aborted at its abort grace.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{occurrences, s_client, sample, served_pem, Gateway, BIN, SOON};
use lifecycle_tests::{loud, require_root, require_tool};
use nix::sys::signal::Signal;

const NOBODY: u32 = 65534;

struct Setup {
    dir: tempfile::TempDir,
    bin: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn write_pair(dir: &Path, cert: &Path, key: &Path) -> String {
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
    fn new() -> (Setup, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        nix::unistd::chown(&spool, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
        let bin = dir.path().join("lifecycle-gateway");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let pem = write_pair(dir.path(), &cert, &key);
        (
            Setup {
                dir,
                bin,
                cert,
                key,
            },
            pem,
        )
    }

    fn start(self) -> Gateway {
        self.launch(r#"user = "nobody""#, |_| {}, "service ready")
    }

    /// Starts the binary with `head` on top of the config, `edit` applied to
    /// the command; waits for the log message `ready`.
    fn launch(self, head: &str, edit: impl FnOnce(&mut Command), ready: &str) -> Gateway {
        let config = format!(
            r#"{head}
spool_dir = "{spool}"
[shutdown]
drain_grace = "2s"
abort_grace = "1s"
[log]
format = "json"
[smtp]
hostname = "gw.test"
[tls]
cert = "{cert}"
key = "{key}"
[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:0"
backlog = 4096
[[listener]]
name = "smtps"
protocol = "smtp"
address = "127.0.0.1:0"
tls = "implicit"
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:0"
[[listener]]
name = "http"
protocol = "http"
address = "127.0.0.1:0"
"#,
            spool = self.dir.path().join("spool").display(),
            cert = self.cert.display(),
            key = self.key.display(),
        );
        let path = self.dir.path().join("gateway.toml");
        std::fs::write(&path, &config).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        edit(&mut cmd);
        let mut gw = Gateway::spawn_command(self.dir, &mut cmd);
        let needle = format!(r#""msg":"{ready}""#);
        gw.wait_log(SOON, |l| l.contains(&needle))
            .unwrap_or_else(|| panic!("not ready:\n{}", gw.log_text()));
        gw.learn_addresses();
        gw
    }
}

/// Counts log lines with this message.
fn count(gw: &Gateway, msg: &str) -> usize {
    let needle = format!(r#""msg":"{msg}""#);
    gw.logs().iter().filter(|l| l.contains(&needle)).count()
}

/// Sends `signal` to the parent and waits for the upgrade's outcome line
/// (`upgrade succeeded` or `upgrade failed`); returns it.
fn upgrade(gw: &Gateway, signal: Signal) -> String {
    upgrade_pid(gw, i32::try_from(gw.pid()).unwrap(), signal)
}

/// [`upgrade`] with the signal sent to `pid`.
fn upgrade_pid(gw: &Gateway, pid: i32, signal: Signal) -> String {
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
struct LoadStats {
    accepted: AtomicU64,
    drained: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    other: AtomicU64,
}

enum Outcome {
    /// `250` for DATA: the message is in the spool.
    Accepted,
    /// `421`: the session's process drains; reconnect and retry.
    Drained,
}

struct Session {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {all:?}"),
            ));
        }
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return Ok(all);
        }
    }
}

fn open(addr: SocketAddr) -> std::io::Result<Result<Session, Outcome>> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(SOON))?;
    let mut r = BufReader::new(s.try_clone()?);
    let greeting = reply(&mut r)?;
    if greeting.starts_with("421") {
        return Ok(Err(Outcome::Drained));
    }
    let mut w = s;
    w.write_all(b"EHLO load.example\r\n")?;
    let ehlo = reply(&mut r)?;
    if ehlo.starts_with("421") {
        return Ok(Err(Outcome::Drained));
    }
    Ok(Ok(Session { r, w }))
}

fn send(s: &mut Session, token: &str) -> std::io::Result<Outcome> {
    s.w.write_all(b"MAIL FROM:<load@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n")?;
    for expect in ["250", "250", "354"] {
        let r = reply(&mut s.r)?;
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
    let r = reply(&mut s.r)?;
    if r.starts_with("250") {
        Ok(Outcome::Accepted)
    } else if r.starts_with("421") {
        Ok(Outcome::Drained)
    } else {
        Err(std::io::Error::other(format!("DATA answered {r:?}")))
    }
}

fn classify(e: &std::io::Error, stats: &LoadStats, what: &str) {
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
fn load(
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
        let _ = reply(&mut session.r);
    }
}

#[test]
fn upgrades_under_load_refuse_nothing_and_lose_nothing() {
    if !require_root("the privileged start with upgrades") {
        return;
    }
    const MESSAGES: u64 = 5_000;
    const UPGRADES: usize = 5;
    const THREADS: usize = 8;
    let (setup, _) = Setup::new();
    let mut gw = setup.start();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..THREADS)
        .map(|id| {
            let (stop, stats, accepted) = (stop.clone(), stats.clone(), accepted.clone());
            let addr = gw.smtp;
            std::thread::spawn(move || load(addr, id, stop, stats, accepted))
        })
        .collect();
    // smtp-source as a second, independent client, where installed: runs
    // of 200 messages over 4 sessions, one after another until the load
    // stops, so that its sessions meet every upgrade.
    const SOURCE_RUN: u64 = 200;
    let source = require_tool("smtp-source").then(|| {
        let (stop, addr) = (stop.clone(), gw.smtp);
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new("smtp-source")
                    .args(["-s", "4", "-m", &SOURCE_RUN.to_string()])
                    .args(["-f", "src@example.org", "-t", "sink@example.net"])
                    .arg(addr.to_string())
                    .output()
                    .unwrap();
                runs.push((
                    out.status,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            runs
        })
    });

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for i in 0..UPGRADES {
        // Upgrades spread over the load.
        while stats.accepted.load(Ordering::Relaxed)
            < (i as u64 + 1) * MESSAGES / (UPGRADES as u64 + 2)
        {
            std::thread::sleep(Duration::from_millis(10));
            assert!(started.elapsed() < Duration::from_secs(600), "load stalled");
        }
        // SIGHUP, as `systemctl reload` sends (SIGUSR2: the rotation test).
        let outcome = upgrade(&gw, Signal::SIGHUP);
        assert!(
            outcome.contains("upgrade succeeded"),
            "{outcome}\n{}",
            gw.log_text()
        );
        outcomes.push(outcome);
    }
    while stats.accepted.load(Ordering::Relaxed) < MESSAGES {
        std::thread::sleep(Duration::from_millis(10));
        assert!(started.elapsed() < Duration::from_secs(600), "load stalled");
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let source_runs = source.map(|t| t.join().unwrap());

    let accepted = accepted.lock().unwrap().clone();
    let (refused, reset, other) = (
        stats.refused.load(Ordering::Relaxed),
        stats.reset.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
    );
    // Every acknowledged token is in the spool exactly once.
    let mut found: HashMap<&str, usize> = accepted.iter().map(|t| (t.as_str(), 0)).collect();
    let messages = gw.messages();
    let mut load_files = 0;
    let mut source_files = 0;
    for path in &messages {
        let body = std::fs::read(path).unwrap();
        if let Some(start) = body.windows(11).position(|w| w == b"load-token-") {
            let rest = &body[start..];
            let end = rest.windows(4).position(|w| w == b"-end").unwrap() + 4;
            let token = std::str::from_utf8(&rest[..end]).unwrap();
            if let Some(n) = found.get_mut(token) {
                *n += 1;
            }
            assert_eq!(occurrences(&body, b"load-token-"), 1);
            load_files += 1;
        } else {
            source_files += 1;
        }
    }
    let missing = found.values().filter(|n| **n == 0).count();
    let doubled = found.values().filter(|n| **n > 1).count();
    loud(&format!(
        "upgrade load: {} messages acknowledged over {THREADS} client threads, {UPGRADES} upgrades in {:?}; \
         {} sessions drained by an old generation (421, retried); refused {refused}, reset {reset}, other errors {other}; \
         spool: {load_files} load files, {missing} acknowledged missing, {doubled} stored twice; smtp-source: {source_files} files from {:?} runs of {SOURCE_RUN}, failed runs {:?}",
        accepted.len(),
        started.elapsed(),
        stats.drained.load(Ordering::Relaxed),
        source_runs.as_ref().map(Vec::len),
        source_runs.as_ref().map(|runs| runs
            .iter()
            .filter(|(s, e)| !s.success() || !e.trim().is_empty())
            .collect::<Vec<_>>()),
    ));
    assert!(accepted.len() as u64 >= MESSAGES);
    assert_eq!(
        (refused, reset, other),
        (0, 0, 0),
        "connections refused or reset"
    );
    assert_eq!((missing, doubled), (0, 0));
    // Unacknowledged transactions are not stored either (none were cut off).
    assert_eq!(
        load_files,
        accepted.len(),
        "a message that got no 250 was stored"
    );
    if let Some(runs) = &source_runs {
        for (status, stderr) in runs {
            assert!(status.success(), "smtp-source: {status} {stderr}");
        }
        assert_eq!(
            source_files as u64,
            runs.len() as u64 * SOURCE_RUN,
            "smtp-source messages in the spool"
        );
    }

    // The metrics of the serving (sixth) generation.
    let metrics = gw.metrics();
    assert_eq!(
        sample(&metrics, "lifecycle_upgrades_total", &[("result", "ok")]),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "lifecycle_upgrades_total",
            &[("result", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(6.0),
        "{metrics}"
    );
    assert!(
        outcomes.last().unwrap().contains(r#""from":5"#)
            && outcomes.last().unwrap().contains(r#""to":6"#),
        "{outcomes:?}"
    );

    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    assert_eq!(count(&gw, "old generation exited"), 5, "{}", gw.log_text());
    // Each old generation knew it drained for an upgrade (stopped accepting
    // at once); the last one drained to stop.
    assert_eq!(
        count(&gw, "draining for an upgrade"),
        5,
        "{}",
        gw.log_text()
    );
    assert_eq!(count(&gw, "draining to stop"), 1, "{}", gw.log_text());
}

#[test]
fn rotation_failed_binary_and_idle_imap_of_the_old_child() {
    if !require_root("the privileged start with upgrades") || !require_tool("openssl") {
        return;
    }
    let (setup, first_pem) = Setup::new();
    let (bin, cert, key, dir) = (
        setup.bin.clone(),
        setup.cert.clone(),
        setup.key.clone(),
        setup.dir.path().to_owned(),
    );
    let mut gw = setup.start();
    let smtps = gw.addr("smtps");
    let served = |gw: &Gateway| {
        let t = s_client(smtps, None, "QUIT\n");
        assert!(t.contains("221 2.0.0"), "{t}\n{}", gw.log_text());
        served_pem(&t).unwrap()
    };
    assert_eq!(served(&gw), first_pem);

    // An idle IMAP client of generation 1.
    let idle = TcpStream::connect(gw.imap).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut idle = BufReader::new(idle);
    let mut greeting = String::new();
    idle.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");

    // Upgrade 1: same certificate; generation 1 drains, the idle client is
    // aborted at the end of its graces (drain 2 s + abort 1 s), not held.
    let outcome = upgrade(&gw, Signal::SIGHUP);
    assert!(outcome.contains("upgrade succeeded"), "{outcome}");
    let upgraded = Instant::now();
    let mut rest = String::new();
    let read = idle.read_line(&mut rest);
    let waited = upgraded.elapsed();
    loud(&format!(
        "idle IMAP client of the old generation: closed after {waited:?} ({read:?}, {rest:?})"
    ));
    assert!(
        matches!(read, Ok(0)) || read.is_err() || rest.starts_with("* BYE"),
        "{read:?} {rest:?}"
    );
    assert!(waited < Duration::from_secs(15), "held for {waited:?}");
    gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"old generation exited""#) && l.contains(r#""generation":1"#)
    })
    .unwrap_or_else(|| panic!("generation 1 did not exit:\n{}", gw.log_text()));
    assert_eq!(served(&gw), first_pem);

    // Rotate on disk, upgrade 2: the new certificate is served.
    let second_pem = write_pair(&dir, &cert, &key);
    assert_ne!(second_pem, first_pem);
    assert_eq!(served(&gw), first_pem, "not before the upgrade");
    let outcome = upgrade(&gw, Signal::SIGUSR2);
    assert!(outcome.contains("upgrade succeeded"), "{outcome}");
    assert_eq!(
        served(&gw),
        second_pem,
        "the rotated certificate after the upgrade"
    );

    // A new binary that exits at start-up: the upgrade fails, generation 3
    // serves on, and says so.
    let script = dir.join("broken");
    std::fs::write(&script, "#!/bin/sh\necho broken binary >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&script, &bin).unwrap();
    let outcome = upgrade(&gw, Signal::SIGHUP);
    loud(&format!("broken binary: {outcome}"));
    assert!(
        outcome.contains("upgrade failed") && outcome.contains("exited with code 1"),
        "{outcome}"
    );
    assert_eq!(served(&gw), second_pem, "the old child still serves");
    let deadline = Instant::now() + SOON;
    let metrics = loop {
        let m = gw.metrics();
        if sample(&m, "lifecycle_upgrades_total", &[("result", "failed")]) == Some(1.0)
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        sample(
            &metrics,
            "lifecycle_upgrades_total",
            &[("result", "failed")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lifecycle_upgrades_total", &[("result", "ok")]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(3.0),
        "{metrics}"
    );

    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}

/// Kills the listed processes when the test ends (successors are not the
/// test's children).
struct Reaper(Vec<i32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

fn gone(pid: i32) -> bool {
    // Reparented successors are reaped by init; a zombie counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// The next notify datagram with `line` among its lines.
fn notified(socket: &std::os::unix::net::UnixDatagram, line: &str) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {line:?}: {e}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.lines().any(|l| l == line) {
            return text;
        }
    }
}

#[test]
fn without_a_privileged_parent_sighup_hands_over_to_a_successor() {
    if !require_root("starting the gateway as user nobody") || !require_tool("openssl") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let (setup, pem) = Setup::new();
    for path in [&setup.cert, &setup.key] {
        nix::unistd::chown(path, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    }
    let notify_path = setup.dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(SOON)).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut gw = setup.launch(
        "",
        |cmd| {
            cmd.uid(NOBODY)
                .gid(NOBODY)
                .env("NOTIFY_SOCKET", &notify_path);
        },
        "ready",
    );
    notified(&notify, "READY=1");
    let first = i32::try_from(gw.pid()).unwrap();
    let mut reaper = Reaper(Vec::new());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|id| {
            let (stop, stats, accepted) = (stop.clone(), stats.clone(), accepted.clone());
            let addr = gw.smtp;
            std::thread::spawn(move || load(addr, id, stop, stats, accepted))
        })
        .collect();

    // Two hand-overs under load: 1 → 2 → 3, each reported with MAINPID=.
    let mut serving = first;
    let mut pids = vec![first];
    for round in 1..=2u64 {
        while stats.accepted.load(Ordering::Relaxed) < round * 300 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let line = upgrade_pid(&gw, serving, Signal::SIGHUP);
        assert!(
            line.contains("upgrade succeeded"),
            "{line}\n{}",
            gw.log_text()
        );
        let next = i32::try_from(common::number(&line, "child").unwrap()).unwrap();
        reaper.0.push(next);
        let text = notified(&notify, &format!("MAINPID={next}"));
        loud(&format!(
            "hand-over {round}: pid {serving} -> {next}; notified {text:?}"
        ));
        pids.push(next);
        serving = next;
    }
    // The first process (the test's child) drained and exited 0; the second
    // is gone too.
    let status = gw.wait_exit(SOON).expect("generation 1 still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    let deadline = Instant::now() + SOON;
    while !gone(pids[1]) {
        assert!(Instant::now() < deadline, "generation 2 still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    while stats.accepted.load(Ordering::Relaxed) < 900 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let (refused, reset, other) = (
        stats.refused.load(Ordering::Relaxed),
        stats.reset.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
    );
    let stored: Vec<Vec<u8>> = gw
        .messages()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let missing = accepted
        .iter()
        .filter(|t| {
            stored
                .iter()
                .filter(|b| occurrences(b, t.as_bytes()) > 0)
                .count()
                != 1
        })
        .count();
    loud(&format!(
        "successor hand-over: pids {pids:?}; {} messages acknowledged, {} sessions drained (421, retried); \
         refused {refused}, reset {reset}, other {other}; {} files in the spool, {missing} acknowledged not stored exactly once",
        accepted.len(),
        stats.drained.load(Ordering::Relaxed),
        stored.len(),
    ));
    assert_eq!((refused, reset, other), (0, 0, 0));
    assert_eq!(missing, 0);
    assert_eq!(stored.len(), accepted.len());

    // The TLS files were passed on: generation 3 serves the certificate.
    let t = s_client(gw.addr("smtps"), None, "QUIT\n");
    assert_eq!(served_pem(&t).as_deref(), Some(pem.as_str()), "{t}");
    let metrics = gw.metrics();
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lifecycle_upgrades_total", &[("result", "ok")]),
        Some(2.0),
        "{metrics}"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(serving), Signal::SIGTERM).unwrap();
    notified(&notify, "STOPPING=1");
    let deadline = Instant::now() + SOON;
    while !gone(serving) {
        assert!(Instant::now() < deadline, "generation 3 still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        count(&gw, "draining for an upgrade"),
        2,
        "{}",
        gw.log_text()
    );
}
