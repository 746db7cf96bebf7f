//! The privileged start for real (needs root): a parent binds and opens,
//! spawns an unprivileged child with `ChildSpawner`, supervises it with
//! `Supervisor`; the child proves what it holds and what it cannot do.
//!
//! The test binary plays three roles, selected by `PRIV_TEST_ROLE`: the test
//! itself (unset), the privileged parent, and the child.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use lifecycle_handoff::{
    verify_cannot_regain_root, ChildSpawner, Error, Handoff, Inventory, ListenerSpec, Mode,
    Supervisor, TargetUser,
};
use lifecycle_tests::{exit_after, open_fds, role_exit};

const ROLE: &str = "PRIV_TEST_ROLE";
const SCENARIO: &str = "PRIV_TEST_SCENARIO";
const KEY: &str = "PRIV_TEST_KEY";
const TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("parent") => parent(),
        Ok("child") => child(),
        Ok("noop") => ExitCode::SUCCESS,
        Ok(other) => {
            eprintln!("unknown {ROLE}={other}");
            ExitCode::FAILURE
        }
        Err(_) => {
            exit_after("privilege_drop", TIMEOUT * 6);
            unknown_user_is_a_clear_error();
            println!("test unknown_user_is_a_clear_error ... ok");
            if !nix::unistd::geteuid().is_root() {
                println!("SKIP: privilege-drop tests need root (running as a normal user)");
                return ExitCode::SUCCESS;
            }
            child_runs_unprivileged_with_only_the_passed_fds();
            println!("test child_runs_unprivileged_with_only_the_passed_fds ... ok");
            sigterm_to_the_parent_reaches_the_child_and_both_exit_0();
            println!("test sigterm_to_the_parent_reaches_the_child_and_both_exit_0 ... ok");
            child_killed_means_parent_exits_137();
            println!("test child_killed_means_parent_exits_137 ... ok");
            child_killed_is_seen_by_a_parent_started_with_sigchld_ignored();
            println!("test child_killed_is_seen_by_a_parent_started_with_sigchld_ignored ... ok");
            parent_killed_means_child_dies();
            println!("test parent_killed_means_child_dies ... ok");
            a_program_in_a_private_directory_runs_unless_its_own_mode_forbids();
            println!(
                "test a_program_in_a_private_directory_runs_unless_its_own_mode_forbids ... ok"
            );
            ExitCode::SUCCESS
        }
    }
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
    let user = TargetUser::lookup("nobody")?;
    let key = std::env::var_os(KEY).unwrap_or_default();
    let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Privileged)?;
    drop(handoff.listen(&smtp_spec())?);
    drop(handoff.open_privileged(&key)?);
    let mut kept = handoff.into_inventory();
    let supervisor = Supervisor::new()?;
    let mut child = ChildSpawner::new()?
        .user(user)
        .env(ROLE, "child")
        .spawn(&kept)?;
    kept.close_files();
    println!("parent {} spawned {}", std::process::id(), child.id());
    supervisor.wait(&mut child)
}

fn smtp_spec() -> ListenerSpec {
    ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap())
}

// ------------------------------------------------------------- the child --

fn child() -> ExitCode {
    let fds = open_fds();
    if let Err(err) = verify_cannot_regain_root() {
        eprintln!("{err}");
        return ExitCode::from(3);
    }
    role_exit("child", run_child(fds))
}

fn run_child(fds: Vec<i32>) -> Result<(), String> {
    let mut handoff = Handoff::detect("LIFECYCLE").map_err(|e| e.to_string())?;
    println!("child mode {}", handoff.mode());
    println!("child fds {fds:?}");
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    for line in status.lines() {
        let key = line.split(':').next().unwrap_or("");
        if ["Uid", "Gid", "Groups", "NoNewPrivs", "CapEff", "SigBlk"].contains(&key) {
            println!("child status {line}");
        }
    }
    let key = std::env::var_os(KEY).unwrap_or_default();
    let mut text = String::new();
    handoff
        .open_privileged(&key)
        .map_err(|e| e.to_string())?
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    println!("child key {text}");
    match std::fs::File::open(&key) {
        Ok(_) => println!("child direct open succeeded"),
        Err(err) => println!("child direct open {:?}", err.kind()),
    }
    let listener = handoff.listen(&smtp_spec()).map_err(|e| e.to_string())?;
    println!(
        "child listener ok {}",
        std::net::TcpListener::from(listener).local_addr().is_ok()
    );

    let scenario = std::env::var(SCENARIO).unwrap_or_default();
    if scenario == "wait-term" {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGTERM);
        set.thread_block().map_err(|e| e.to_string())?;
        println!("child ready {}", std::process::id());
        let signal = set.wait().map_err(|e| e.to_string())?;
        println!("child got {signal:?}, draining");
        return Ok(());
    }
    println!("child ready {}", std::process::id());
    if scenario == "hang" {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}

// -------------------------------------------------------------- the test --

struct Started {
    parent: Child,
    out: BufReader<ChildStdout>,
    seen: String,
    child_pid: i32,
    _dir: tempfile::TempDir,
}

/// Starts the parent role and reads its output up to "child ready".
fn start(scenario: &str) -> Started {
    start_with(scenario, false)
}

/// Starts the parent; with `sigchld_ignored`, as a process manager that
/// ignores `SIGCHLD` would (the disposition survives exec).
fn start_with(scenario: &str, sigchld_ignored: bool) -> Started {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tls.key");
    std::fs::write(&key, "secret").unwrap();
    // Root-only, like a real TLS key.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(ROLE, "parent")
        .env(SCENARIO, scenario)
        .env(KEY, &key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if sigchld_ignored {
        // SAFETY: between fork and exec only `signal`, which is
        // async-signal-safe, runs; it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGCHLD,
                    nix::sys::signal::SigHandler::SigIgn,
                )
                .map(drop)
                .map_err(std::io::Error::from)
            });
        }
    }
    let mut parent = command.spawn().unwrap();
    let mut out = BufReader::new(parent.stdout.take().unwrap());
    let mut seen = String::new();
    let child_pid = loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "output ended before the child was ready:\n{seen}");
        seen.push_str(&line);
        if let Some(pid) = line.strip_prefix("child ready ") {
            break pid.trim().parse().unwrap();
        }
    };
    Started {
        parent,
        out,
        seen,
        child_pid,
        _dir: dir,
    }
}

impl Started {
    fn finish(mut self) -> (i32, String) {
        self.out.read_to_string(&mut self.seen).unwrap();
        let status = self.parent.wait().unwrap();
        (lifecycle_handoff::exit_code(status), self.seen)
    }
}

fn unknown_user_is_a_clear_error() {
    let err = TargetUser::lookup("no-such-user-for-lifecycle").unwrap_err();
    assert!(matches!(err, Error::UnknownUser { .. }), "{err:?}");
    assert!(
        err.to_string().contains("\"no-such-user-for-lifecycle\""),
        "{err}"
    );
    assert_eq!(TargetUser::lookup("nobody").unwrap().uid(), 65534);
    assert_eq!(TargetUser::lookup("65534").unwrap().name(), "nobody");
}

fn child_runs_unprivileged_with_only_the_passed_fds() {
    let (code, out) = start("report").finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("child mode inherited"), "{out}");
    for line in [
        "child status Uid:\t65534\t65534\t65534\t65534\n",
        "child status Gid:\t65534\t65534\t65534\t65534\n",
        "child status NoNewPrivs:\t1\n",
        "child status CapEff:\t0000000000000000\n",
        "child status SigBlk:\t0000000000000000\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let groups = out
        .lines()
        .find_map(|l| l.strip_prefix("child status Groups:"))
        .unwrap();
    assert_eq!(groups.trim(), "", "no supplementary groups");
    // 0, 1, 2, the listener (3), the key (4), and read_dir's own fd (5).
    assert!(out.contains("child fds [0, 1, 2, 3, 4, 5]\n"), "{out}");
    assert!(out.contains("child key secret\n"), "{out}");
    assert!(
        out.contains("child direct open PermissionDenied\n"),
        "{out}"
    );
    assert!(out.contains("child listener ok true\n"), "{out}");
}

fn sigterm_to_the_parent_reaches_the_child_and_both_exit_0() {
    let started = start("wait-term");
    let parent = nix::unistd::Pid::from_raw(started.parent.id() as i32);
    nix::sys::signal::kill(parent, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, out) = started.finish();
    assert!(out.contains("child got SIGTERM, draining"), "{out}");
    assert_eq!(code, 0, "{out}");
}

fn child_killed_means_parent_exits_137() {
    let started = start("hang");
    let child = nix::unistd::Pid::from_raw(started.child_pid);
    nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
    let (code, out) = started.finish();
    assert_eq!(code, 137, "{out}");
}

/// Started with `SIGCHLD` ignored, the kernel would reap the child itself
/// and queue no `SIGCHLD`: the parent restores the default, so it still
/// learns that its child died.
fn child_killed_is_seen_by_a_parent_started_with_sigchld_ignored() {
    let mut started = start_with("hang", true);
    let child = nix::unistd::Pid::from_raw(started.child_pid);
    nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    while started.parent.try_wait().unwrap().is_none() {
        if killed.elapsed() > TIMEOUT {
            let _ = started.parent.kill();
            panic!("the parent never saw its child die (SIGCHLD left ignored)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, out) = started.finish();
    assert_eq!(code, 137, "{out}");
}

/// Running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()),
            Some(Some('Z' | 'X'))
        ),
    }
}

fn parent_killed_means_child_dies() {
    let mut started = start("hang");
    assert!(alive(started.child_pid));
    let parent = nix::unistd::Pid::from_raw(started.parent.id() as i32);
    nix::sys::signal::kill(parent, nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    started.parent.wait().unwrap();
    while alive(started.child_pid) {
        assert!(
            killed.elapsed() < TIMEOUT,
            "child {} outlived its parent",
            started.child_pid
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "child {} died {:?} after its parent was killed",
        started.child_pid,
        killed.elapsed()
    );
}

/// The child executes what the root parent opened: a copy of this binary
/// in a `0700` directory `nobody` cannot search still starts as `nobody`
/// when the file's own mode lets it; when the mode does not, the spawn is
/// refused before any fork, naming the file, the user and the fix.
fn a_program_in_a_private_directory_runs_unless_its_own_mode_forbids() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let program = dir.path().join("private-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = TargetUser::lookup("nobody").unwrap();
    let spawner = ChildSpawner::new()
        .unwrap()
        .program(&program)
        .args(Vec::<String>::new())
        .env(ROLE, "noop")
        .user(nobody.clone());
    let status = spawner
        .spawn(&Inventory::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .wait()
        .unwrap();
    assert!(status.success(), "{status:?}");

    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o750)).unwrap();
    let err = spawner.spawn(&Inventory::default()).unwrap_err();
    assert!(matches!(err, Error::ProgramNotExecutable { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        program.display().to_string(),
        nobody.to_string(),
        format!("chmod o+x {}", program.display()),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
}
