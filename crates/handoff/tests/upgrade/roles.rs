//! The processes this binary plays besides the test: the upgrading
//! parent, and a serving child (or an old process that hands over).

use std::io::Read;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_handoff::{
    ChildSpawner, Error, Handoff, Inventory, Lineage, ListenerSpec, Mode, PassedListener,
    SuccessorHandoff, TargetUser, UpgradeSupervisor,
};
use nix::sys::signal::{SigSet, Signal};

use crate::{
    CHILD_EXIT, CHILD_GRACE_MS, CHILD_HANG, CHILD_READY_EXIT, FILE, READY_TIMEOUT_MS, ROLE, USER,
};

// ------------------------------------------------------------ the parent --

pub(crate) fn parent() -> ExitCode {
    match run_parent() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("parent failed: {err}");
            ExitCode::from(70)
        }
    }
}

pub(crate) fn run_parent() -> Result<i32, Error> {
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

pub(crate) fn echo_spec() -> ListenerSpec {
    ListenerSpec::tcp("echo", "127.0.0.1:0".parse().unwrap())
}

// ------------------------------------------------- a serving child (or old) --

/// Serves until SIGTERM: answers every connection with one line. In
/// `Immediate` mode (the `old` role) it binds itself and, on SIGHUP, hands
/// its listener to a successor and then drains.
pub(crate) fn serve(mode: Mode) -> ExitCode {
    lifecycle_tests::role_exit(&format!("{mode} child"), run_serve(mode))
}

pub(crate) fn run_serve(mode: Mode) -> Result<(), String> {
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
pub(crate) fn accept_loop(
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
