//! Zero-downtime upgrades for real: a parent process runs
//! `UpgradeSupervisor`, children serve a TCP listener the parent keeps, and
//! the test upgrades on SIGHUP while clients connect without pause.
//!
//! The test binary plays every role, selected by `UPG_TEST_ROLE`: the test
//! itself (unset), the parent (`parent`), a serving child (`child`), and an
//! unprivileged process that hands over to a successor (`old`). Each
//! scenario runs the parent from a *copy* of the test binary in a temporary
//! directory, so a scenario can replace "the binary on disk" with `mv`.
//! Every child answers each connection with one line naming its generation,
//! lineage, pid, whether it saw `NOTIFY_SOCKET`, and the content of the
//! privileged file it got.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_handoff::{
    ChildSpawner, Error, Handoff, Inventory, Lineage, ListenerSpec, Mode, PassedListener,
    SuccessorHandoff, TargetUser, UpgradeSupervisor,
};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

const ROLE: &str = "UPG_TEST_ROLE";
const FILE: &str = "UPG_TEST_FILE";
const USER: &str = "UPG_TEST_USER";
const READY_TIMEOUT_MS: &str = "UPG_TEST_READY_TIMEOUT_MS";
const CHILD_GRACE_MS: &str = "UPG_TEST_CHILD_GRACE_MS";
/// Makes a child exit with this code at start-up.
const CHILD_EXIT: &str = "UPG_TEST_CHILD_EXIT";
/// Makes a child exit with this code right after reporting ready.
const CHILD_READY_EXIT: &str = "UPG_TEST_CHILD_READY_EXIT";
/// Makes a child serve without ever reporting ready.
const CHILD_HANG: &str = "UPG_TEST_CHILD_HANG";
const TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("parent") => parent(),
        Ok("child") => serve(Mode::Inherited),
        Ok("old") => serve(Mode::Immediate),
        Ok(other) => {
            eprintln!("unknown {ROLE}={other}");
            ExitCode::FAILURE
        }
        Err(_) => {
            std::thread::spawn(|| {
                std::thread::sleep(TIMEOUT * 12);
                eprintln!("upgrade: no result after {:?}, giving up", TIMEOUT * 12);
                std::process::exit(2);
            });
            run_tests()
        }
    }
}

fn run_tests() -> ExitCode {
    let root = nix::unistd::geteuid().is_root();
    upgrades_under_continuous_connections(None);
    println!("test upgrades_under_continuous_connections ... ok");
    if root {
        upgrades_under_continuous_connections(Some("nobody"));
        println!("test upgrades_under_continuous_connections_as_nobody ... ok");
    } else {
        println!(
            "SKIP: upgrades_under_continuous_connections_as_nobody needs root (privilege \
             drop to nobody, root-only file)"
        );
    }
    failed_upgrades_keep_the_old_child_serving();
    println!("test failed_upgrades_keep_the_old_child_serving ... ok");
    a_child_that_dies_right_after_ready_is_a_failed_upgrade();
    println!("test a_child_that_dies_right_after_ready_is_a_failed_upgrade ... ok");
    a_new_child_told_to_stop_gets_its_grace();
    println!("test a_new_child_told_to_stop_gets_its_grace ... ok");
    parent_notifies_systemd();
    println!("test parent_notifies_systemd ... ok");
    first_child_exit_is_passed_through();
    println!("test first_child_exit_is_passed_through ... ok");
    successor_takes_over_the_listener();
    println!("test successor_takes_over_the_listener ... ok");
    killed_parent_takes_the_upgraded_child_down();
    println!("test killed_parent_takes_the_upgraded_child_down ... ok");
    ExitCode::SUCCESS
}

// ------------------------------------------------------------ the parent --

fn parent() -> ExitCode {
    match run_parent() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("parent failed: {err}");
            ExitCode::from(70)
        }
    }
}

fn run_parent() -> Result<i32, Error> {
    let user = match std::env::var(USER) {
        Ok(name) => Some(TargetUser::lookup(&name)?),
        Err(_) => None,
    };
    let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Privileged)?;
    let listener = handoff.listen(&echo_spec())?;
    let port = std::net::TcpListener::from(listener)
        .local_addr()
        .map_err(|source| Error::Bind {
            spec: "echo".into(),
            source,
        })?
        .port();
    if let Some(path) = std::env::var_os(FILE) {
        drop(handoff.open_privileged(path)?);
    }
    let kept = handoff.into_inventory();
    let mut supervisor = UpgradeSupervisor::new()?;
    if let Some(ms) = std::env::var(READY_TIMEOUT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        supervisor = supervisor.ready_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = std::env::var(CHILD_GRACE_MS)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        supervisor = supervisor.child_grace(Duration::from_millis(ms));
    }
    let mut spawner = ChildSpawner::new()?.env(ROLE, "child");
    if let Some(user) = user {
        spawner = spawner.user(user);
    }
    println!("port {port}");
    supervisor.run(spawner, kept, |event| println!("event {event}"))
}

fn echo_spec() -> ListenerSpec {
    ListenerSpec::tcp("echo", "127.0.0.1:0".parse().unwrap())
}

// ------------------------------------------------- a serving child (or old) --

/// Serves until SIGTERM: answers every connection with one line. In
/// `Immediate` mode (the `old` role) it binds itself and, on SIGHUP, hands
/// its listener to a successor and then drains.
fn serve(mode: Mode) -> ExitCode {
    match run_serve(mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{mode} child failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(mode: Mode) -> Result<(), String> {
    let mut handoff = match mode {
        Mode::Immediate => Handoff::with_mode("LIFECYCLE", Mode::Immediate),
        _ => Handoff::detect("LIFECYCLE"),
    }
    .map_err(|e| e.to_string())?;
    if let Some(code) = std::env::var(CHILD_EXIT).ok().and_then(|c| c.parse().ok()) {
        std::process::exit(code);
    }
    if handoff.mode() != mode {
        return Err(format!("expected {mode} mode, got {}", handoff.mode()));
    }
    let lineage = handoff.lineage();
    let listener =
        std::net::TcpListener::from(handoff.listen(&echo_spec()).map_err(|e| e.to_string())?);
    if mode == Mode::Immediate {
        println!(
            "port {}",
            listener.local_addr().map_err(|e| e.to_string())?.port()
        );
    }
    let file = match std::env::var_os(FILE) {
        Some(path) => {
            let mut text = String::new();
            handoff
                .open_privileged(&path)
                .map_err(|e| e.to_string())?
                .read_to_string(&mut text)
                .map_err(|e| e.to_string())?;
            text.trim().to_owned()
        }
        None => "-".to_owned(),
    };
    let shown = lineage.unwrap_or(Lineage::FIRST);
    let answer = format!(
        "gen={} ok={} failed={} pid={} uid={} notify={} watchdog={} file={}",
        shown.generation,
        shown.upgrades_ok,
        shown.upgrades_failed,
        std::process::id(),
        nix::unistd::getuid(),
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            "set"
        } else {
            "unset"
        },
        if std::env::var_os("WATCHDOG_PID").is_some() {
            "set"
        } else {
            "unset"
        },
        file
    );

    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    signals.thread_block().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let kept = listener.try_clone().map_err(|e| e.to_string())?;
    // The parent's counters as they arrive on the readiness channel.
    let live = Arc::new(Mutex::new("-/-".to_owned()));
    let accept = {
        let stop = Arc::clone(&stop);
        let live = Arc::clone(&live);
        std::thread::spawn(move || accept_loop(&listener, &stop, &answer, &live))
    };
    if let Some(mut ready) = handoff.take_ready_channel() {
        if std::env::var_os(CHILD_HANG).is_some() {
            std::mem::forget(ready); // keeps the channel open, never ready
        } else {
            ready.notify_ready().map_err(|e| e.to_string())?;
            if let Some(code) = (std::env::var(CHILD_READY_EXIT).ok()).and_then(|c| c.parse().ok())
            {
                std::process::exit(code);
            }
            std::thread::spawn(move || {
                while let Ok(Some(update)) = ready.recv_update() {
                    *live.lock().unwrap() =
                        format!("{}/{}", update.upgrades_ok, update.upgrades_failed);
                }
            });
        }
    }
    loop {
        match signals.wait().map_err(|e| e.to_string())? {
            Signal::SIGHUP if mode == Mode::Immediate => {
                let mut inventory = Inventory::default();
                inventory.listeners.push(PassedListener {
                    spec: echo_spec(),
                    fd: kept
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| e.to_string())?,
                });
                let spawner = ChildSpawner::new()
                    .map_err(|e| e.to_string())?
                    .env(ROLE, "child");
                match SuccessorHandoff::new(spawner)
                    .lineage(lineage)
                    .start(&inventory)
                {
                    Ok(successor) => {
                        println!(
                            "successor {} generation {}",
                            successor.pid(),
                            successor.generation()
                        );
                        break;
                    }
                    Err(err) => println!("successor failed: {err}"),
                }
            }
            Signal::SIGTERM => break,
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    accept
        .join()
        .map_err(|_| "accept thread panicked".to_owned())?;
    Ok(())
}

/// Accepts until `stop`, finishing each connection before looking again,
/// so a drain never drops an accepted connection.
fn accept_loop(
    listener: &std::net::TcpListener,
    stop: &AtomicBool,
    answer: &str,
    live: &Mutex<String>,
) {
    use std::io::Write;
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let line = format!("{answer} live={}\n", live.lock().unwrap());
                let _ = stream.write_all(line.as_bytes());
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

// ------------------------------------------------------------- the test --

/// A parent process started from a copy of this binary, its stdout lines
/// collected.
struct Parent {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    port: u16,
    binary: PathBuf,
}

impl Parent {
    fn start(dir: &Path, envs: &[(&str, String)]) -> Parent {
        let binary = install_copy(dir);
        let mut command = Command::new(&binary);
        command
            .env(ROLE, "parent")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let mut parent = Parent {
            child,
            lines,
            seen: Vec::new(),
            port: 0,
            binary,
        };
        let line = parent.expect("port ");
        parent.port = line["port ".len()..].parse().unwrap();
        parent
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Waits for a line containing `needle`; returns it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn ask(&self) -> String {
        ask(self.address()).unwrap()
    }

    /// Asks until the answer satisfies `done` (an update travels on its own
    /// channel, so it may trail the parent's event line a little).
    fn ask_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let answer = self.ask();
            if done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "last answer {answer}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the parent to exit; returns its code.
    fn finish(mut self) -> (i32, Vec<String>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return (status.code().unwrap_or(-1), std::mem::take(&mut self.seen));
            }
            assert!(
                Instant::now() < deadline,
                "parent did not exit; saw {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        // Only after a failed assertion: do not leave a parent running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stdout: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Copies this test binary into `dir/bin/` (world-readable and
/// executable, so an unprivileged child can exec it) and returns the path.
fn install_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.join("upgrade-test");
    replace_binary(&path, &std::env::current_exe().unwrap());
    path
}

/// Replaces `target` the way a deployer does: write a new file next to it,
/// then rename it over the old one (the running image stays, `(deleted)`).
fn replace_binary(target: &Path, source: &Path) {
    let staged = target.with_extension("new");
    std::fs::copy(source, &staged).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

fn replace_with_script(target: &Path, script: &str) {
    let staged = target.with_extension("new");
    std::fs::write(&staged, script).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

/// Writes `content` to `path` as a rotation does: a new file renamed over
/// the old one, so only a re-open sees it.
fn rotate(path: &Path, content: &str, mode: u32) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, content).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// One connection: connect, read the answer line.
fn ask(address: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(line.trim_end().to_owned())
}

fn field<'a>(answer: &'a str, name: &str) -> &'a str {
    answer
        .split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {answer:?}"))
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    answers: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
}

/// Clients that connect without pause until stopped.
fn load(address: SocketAddr, clients: usize, stop: Arc<AtomicBool>) -> Arc<Mutex<Tally>> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    for _ in 0..clients {
        let stop = Arc::clone(&stop);
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let result = ask(address);
                let mut tally = tally.lock().unwrap();
                match result {
                    Ok(answer) => {
                        let key = format!(
                            "gen={} file={}",
                            field(&answer, "gen"),
                            field(&answer, "file")
                        );
                        *tally.answers.entry(key).or_default() += 1;
                    }
                    Err(err) => *tally.errors.entry(format!("{:?}", err.kind())).or_default() += 1,
                }
            }
        });
    }
    tally
}

fn upgrades_under_continuous_connections(user: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    // Root-only when a user is dropped to: only the passed fd lets the child read it.
    let mode = if user.is_some() { 0o600 } else { 0o644 };
    rotate(&secret, "v1", mode);
    let mut envs = vec![(FILE, secret.display().to_string())];
    if let Some(user) = user {
        envs.push((USER, user.to_owned()));
    }
    let mut parent = Parent::start(dir.path(), &envs);
    parent.expect("generation 1 (pid");
    let first = parent.ask();
    assert_eq!(field(&first, "gen"), "1", "{first}");
    assert_eq!(field(&first, "file"), "v1", "{first}");
    if let Some(user) = user {
        let uid = TargetUser::lookup(user).unwrap().uid().to_string();
        assert_eq!(field(&first, "uid"), uid, "{first}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = load(parent.address(), 4, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(200));
    const UPGRADES: u64 = 4;
    for from in 1..=UPGRADES {
        let to = from + 1;
        if to == 3 {
            // Rotated between the second and the third upgrade.
            rotate(&secret, "v2", mode);
        }
        parent.signal(if from % 2 == 0 {
            Signal::SIGUSR2
        } else {
            Signal::SIGHUP
        });
        parent.expect(&format!("upgrade from generation {from} to {to} succeeded"));
        parent.expect(&format!("old generation {from} ("));
        let exited = parent.seen.last().unwrap().clone();
        assert!(exited.ends_with("exited with code 0"), "{exited}");
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let last = parent.ask_until(|a| field(a, "live") != "-/-");
    assert_eq!(field(&last, "gen"), "5", "{last}");
    assert_eq!(field(&last, "ok"), "3", "{last}");
    assert_eq!(field(&last, "failed"), "0", "{last}");
    // Its own upgrade, counted by the parent and sent over the channel.
    assert_eq!(field(&last, "live"), "4/0", "{last}");
    assert_eq!(field(&last, "file"), "v2", "{last}");

    parent.signal(Signal::SIGTERM);
    let (code, seen) = parent.finish();
    let tally = tally.lock().unwrap();
    let total: usize = tally.answers.values().sum();
    println!(
        "  {} connections during {UPGRADES} upgrades: answers {:?}, errors {:?}",
        total + tally.errors.values().sum::<usize>(),
        tally.answers,
        tally.errors
    );
    assert!(
        tally.errors.is_empty(),
        "refused or failed connections: {:?}",
        tally.errors
    );
    let gens: BTreeSet<&str> = tally
        .answers
        .keys()
        .filter_map(|k| k.split(' ').next())
        .collect();
    assert!(gens.len() >= 3, "answers from only {gens:?}");
    for (key, _) in tally.answers.iter() {
        let gen: u64 = key["gen=".len()..key.find(' ').unwrap()].parse().unwrap();
        let expected = if gen >= 3 { "file=v2" } else { "file=v1" };
        assert!(key.ends_with(expected), "generation {gen} answered {key}");
    }
    assert_eq!(code, 0, "parent exit code; saw {seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("serving generation 5 (pid") && l.ends_with("exited with code 0")),
        "{seen:#?}"
    );
}

fn failed_upgrades_keep_the_old_child_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(dir.path(), &[(READY_TIMEOUT_MS, "3000".into())]);
    parent.expect("generation 1 (pid");
    let original = std::env::current_exe().unwrap();

    // A new binary that exits at start-up.
    replace_with_script(&parent.binary, "#!/bin/sh\nexit 3\n");
    parent.signal(Signal::SIGHUP);
    let failed = parent.expect("upgrade from generation 1 to 2 failed");
    assert!(failed.contains("exited with code 3"), "{failed}");
    assert!(failed.contains("upgrades ok 0, failed 1"), "{failed}");
    // The serving child hears of the failure (for its metrics).
    let answer = parent.ask_until(|a| field(a, "live") == "0/1");
    assert_eq!(field(&answer, "gen"), "1");

    // A new binary that never reports ready: timeout. A second signal
    // during it is queued and runs (with the good binary) afterwards.
    replace_with_script(&parent.binary, "#!/bin/sh\nexec sleep 600\n");
    parent.signal(Signal::SIGHUP);
    parent.expect("started generation 3");
    replace_binary(&parent.binary, &original);
    parent.signal(Signal::SIGHUP);
    parent.expect("SIGHUP: generation 3 is still starting, the upgrade waits");
    assert_eq!(
        field(&parent.ask(), "gen"),
        "1",
        "old child serves during the upgrade"
    );
    let timed_out = parent.expect("upgrade from generation 1 to 3 failed");
    assert!(timed_out.contains("not ready within 3s"), "{timed_out}");
    parent.expect("upgrade from generation 1 to 4 succeeded");
    // Until it handles its SIGTERM the old child may still accept one.
    parent.expect("old generation 1 (");
    let answer = parent.ask_until(|a| field(a, "live") != "-/-");
    assert_eq!(field(&answer, "gen"), "4", "{answer}");
    assert_eq!(field(&answer, "failed"), "2", "{answer}");
    assert_eq!(field(&answer, "live"), "1/2", "{answer}");

    // SIGTERM during an upgrade: both children are told; the upgrade
    // fails as stopping, the parent exits with the serving child's 0.
    replace_with_script(&parent.binary, "#!/bin/sh\nexec sleep 600\n");
    parent.signal(Signal::SIGUSR2);
    parent.expect("started generation 5");
    parent.signal(Signal::SIGTERM);
    parent.expect("SIGTERM forwarded to generations [4, 5]");
    parent.expect("upgrade from generation 4 to 5 failed: the service is stopping");
    let (code, seen) = parent.finish();
    assert_eq!(code, 0, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("serving generation 4") && l.ends_with("exited with code 0")),
        "{seen:#?}"
    );
}

/// A new child that reports ready and is dead by the time the parent looks
/// must not replace the old one. The script stops the parent, and the test
/// lets it go on only once the child has written ready and exited (a
/// zombie), so the parent sees both in one pass; the upgrade fails and the
/// old child keeps serving.
fn a_child_that_dies_right_after_ready_is_a_failed_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(dir.path(), &[]);
    parent.expect("generation 1 (pid");
    let original = std::env::current_exe().unwrap();
    let pid_file = dir.path().join("candidate.pid");
    replace_with_script(
        &parent.binary,
        &format!(
            "#!/bin/sh\necho $$ > '{}'\nkill -STOP $PPID\n{CHILD_READY_EXIT}=4 exec '{}' \"$@\"\n",
            pid_file.display(),
            original.display()
        ),
    );
    parent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    let zombie = loop {
        let state = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok())
            .and_then(|stat| Some(stat.rsplit_once(") ")?.1.chars().next()? == 'Z'));
        if state == Some(true) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    parent.signal(Signal::SIGCONT);
    assert!(
        zombie,
        "the candidate did not report ready and exit in time"
    );
    let failed = parent.expect("upgrade from generation 1 to 2 failed");
    assert!(failed.contains("exited with code 4"), "{failed}");
    let answer = parent.ask();
    assert_eq!(field(&answer, "gen"), "1", "old child serves: {answer}");
    assert!(
        !parent.seen.iter().any(|l| l.contains("succeeded")),
        "{:#?}",
        parent.seen
    );
    parent.signal(Signal::SIGTERM);
    let (code, seen) = parent.finish();
    assert_eq!(code, 0, "{seen:#?}");
}

/// A new child that serves without reporting ready may hold connections it
/// accepted from the shared listener: when its time is up it is told to stop
/// (SIGTERM) and exits by itself, and only one that outlives the child grace
/// is killed; the same when the serving child dies during the upgrade.
/// Before, each was killed (SIGKILL) at once: the first and the last would
/// not exit with code 0.
fn a_new_child_told_to_stop_gets_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(
        dir.path(),
        &[
            (READY_TIMEOUT_MS, "3000".into()),
            (CHILD_GRACE_MS, "1000".into()),
        ],
    );
    parent.expect("generation 1 (pid");
    let first = parent.ask();
    let original = std::env::current_exe().unwrap();
    // The real child, serving but never ready.
    let hanging = format!(
        "#!/bin/sh\n{CHILD_HANG}=1 exec '{}' \"$@\"\n",
        original.display()
    );

    // Not ready in time: a failed upgrade, the old child serves on, and the
    // new one handles its SIGTERM (code 0).
    replace_with_script(&parent.binary, &hanging);
    parent.signal(Signal::SIGHUP);
    let failed = parent.expect("upgrade from generation 1 to 2 failed");
    assert!(failed.contains("not ready within 3s"), "{failed}");
    assert!(failed.contains("upgrades ok 0, failed 1"), "{failed}");
    let stopped = parent.expect("stopped new generation 2 (pid");
    assert!(stopped.ends_with("exited with code 0"), "{stopped}");
    let answer = parent.ask_until(|a| field(a, "live") == "0/1");
    assert_eq!(field(&answer, "gen"), "1", "{answer}");

    // One that ignores SIGTERM is killed once the grace is over.
    replace_with_script(&parent.binary, "#!/bin/sh\ntrap '' TERM\nexec sleep 600\n");
    parent.signal(Signal::SIGHUP);
    parent.expect("upgrade from generation 1 to 3 failed");
    let killed = parent.expect("stopped new generation 3 (pid");
    assert!(
        killed.ends_with("outlived the child grace and was killed (code 137)"),
        "{killed}"
    );

    // The serving child dies while a new one serves without being ready:
    // the service is over, but the new one gets SIGTERM and its grace.
    replace_with_script(&parent.binary, &hanging);
    parent.signal(Signal::SIGHUP);
    parent.expect("started generation 4");
    parent.ask_until(|a| field(a, "gen") == "4");
    let pid: i32 = field(&first, "pid").parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let exited = parent.expect("serving generation 1 (pid");
    assert!(exited.ends_with("exited with code 137"), "{exited}");
    let stopped = parent.expect("stopped new generation 4 (pid");
    assert!(stopped.ends_with("exited with code 0"), "{stopped}");
    parent.expect("upgrade from generation 1 to 4 failed: the service is stopping");
    let (code, seen) = parent.finish();
    assert_eq!(code, 137, "{seen:#?}");
}

/// Receives one datagram (a notification), or panics after the timeout.
fn receive(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification from the parent");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn parent_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut parent = Parent::start(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "10000000".into()),
            ("WATCHDOG_PID", "1".into()),
        ],
    );
    let ready = receive(&socket);
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready:?}");
    assert!(
        lines.contains(&format!("MAINPID={}", parent.child.id()).as_str()),
        "{ready:?}"
    );
    let answer = parent.ask();
    assert_eq!(field(&answer, "notify"), "unset", "{answer}");
    assert_eq!(field(&answer, "watchdog"), "unset", "{answer}");

    parent.signal(Signal::SIGHUP);
    let reloading = receive(&socket);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = receive(&socket);
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded:?}");
    assert!(
        reloaded.contains("STATUS=serving generation 2"),
        "{reloaded:?}"
    );
    parent.expect("upgrade from generation 1 to 2 succeeded");

    parent.signal(Signal::SIGTERM);
    let stopping = receive(&socket);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let (code, seen) = parent.finish();
    assert_eq!(code, 0, "{seen:#?}");
}

fn first_child_exit_is_passed_through() {
    let dir = tempfile::tempdir().unwrap();
    // The parent cannot open a privileged file: a clear error, exit 70,
    // nothing started.
    let missing = dir.path().join("does-not-exist");
    let binary = install_copy(dir.path());
    let output = Command::new(&binary)
        .env(ROLE, "parent")
        .env(FILE, &missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does-not-exist"), "{stderr}");

    // A first child that exits at start-up: its code is the parent's.
    let parent = Parent::start(dir.path(), &[(CHILD_EXIT, "4".into())]);
    let (code, seen) = parent.finish();
    assert_eq!(code, 4, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("serving generation 1") && l.ends_with("exited with code 4")),
        "{seen:#?}"
    );

    // A first child that never reports ready: killed after the timeout, and
    // the parent fails with a message that says so.
    let output = Command::new(&binary)
        .env(ROLE, "parent")
        .env(CHILD_HANG, "1")
        .env(READY_TIMEOUT_MS, "1000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("generation 1") && stderr.contains("did not become ready"),
        "{stderr}"
    );
}

/// True once `pid` is gone or a zombie waiting for a reaper.
fn is_gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
}

fn killed_parent_takes_the_upgraded_child_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(dir.path(), &[]);
    parent.expect("generation 1 (pid");
    parent.signal(Signal::SIGHUP);
    parent.expect("upgrade from generation 1 to 2 succeeded");
    parent.expect("old generation 1 (");
    let answer = parent.ask();
    assert_eq!(field(&answer, "gen"), "2", "{answer}");
    let child: i32 = field(&answer, "pid").parse().unwrap();
    // The upgraded child was spawned from the main thread too, so its
    // parent-death signal fires when the parent dies.
    parent.signal(Signal::SIGKILL);
    let deadline = Instant::now() + TIMEOUT;
    while !is_gone(child) {
        assert!(
            Instant::now() < deadline,
            "child {child} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = TcpStream::connect_timeout(&parent.address(), TIMEOUT);
    assert!(refused.is_err(), "the listener died with both processes");
}

fn successor_takes_over_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let binary = install_copy(dir.path());
    let mut old = Command::new(&binary)
        .env(ROLE, "old")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines(old.stdout.take().unwrap());
    let port: u16 = lines.recv_timeout(TIMEOUT).unwrap()["port ".len()..]
        .parse()
        .unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let before = ask(address).unwrap();
    assert_eq!(field(&before, "gen"), "1");
    assert_eq!(field(&before, "pid"), old.id().to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = load(address, 2, Arc::clone(&stop));
    kill(Pid::from_raw(old.id() as i32), Signal::SIGHUP).unwrap();
    let reloading = receive(&socket);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let line = lines.recv_timeout(TIMEOUT).unwrap();
    assert!(line.starts_with("successor "), "{line}");
    let successor: i32 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let ready = receive(&socket);
    // No MAINPID= from the old process: systemd would supervise the
    // successor as "not our child" and SIGKILL it on stop (issue 17); the
    // successor names itself once the old process exited.
    assert!(
        !ready.lines().any(|l| l.starts_with("MAINPID=")),
        "{ready:?} (successor {successor})"
    );
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    // The old process drains and exits 0; the successor (no death signal)
    // keeps serving.
    let status = old.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    let after = ask(address).unwrap();
    assert_eq!(field(&after, "gen"), "2", "{after}");
    assert_eq!(field(&after, "ok"), "0", "{after}");
    assert_eq!(field(&after, "pid"), successor.to_string());
    assert_eq!(
        field(&after, "notify"),
        "set",
        "the successor becomes the main process"
    );
    assert_eq!(
        field(&after, "watchdog"),
        "unset",
        "WATCHDOG_PID named the old process"
    );
    let tally = tally.lock().unwrap();
    println!(
        "  hand-off under load: answers {:?}, errors {:?}",
        tally.answers, tally.errors
    );
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);

    // Stop the successor (not our child: it was re-parented).
    kill(Pid::from_raw(successor), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !is_gone(successor) {
        assert!(
            Instant::now() < deadline,
            "successor {successor} did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
