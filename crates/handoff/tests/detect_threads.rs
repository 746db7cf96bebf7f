//! `Handoff::detect` removes the hand-off variables from the environment,
//! which is only sound while the process has one thread: with a second
//! thread running it refuses with `Error::ThreadsRunning` and leaves the
//! environment alone; with one thread it takes the hand-off.
//!
//! The test binary re-executes itself (`HANDOFF_TEST_ROLE` selects the
//! child role), so the child's threads are exactly the ones it starts.

use std::process::{Command, ExitCode};

use lifecycle_handoff::{ChildHandoff, Error, Handoff, Inventory, Mode, VarNames};

const ROLE: &str = "HANDOFF_TEST_ROLE";

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("one-thread") => child(false),
        Ok("two-threads") => child(true),
        Ok(other) => {
            eprintln!("unknown {ROLE}={other}");
            ExitCode::FAILURE
        }
        Err(_) => {
            detect_refuses_in_a_multi_threaded_process();
            println!("test detect_refuses_in_a_multi_threaded_process ... ok");
            ExitCode::SUCCESS
        }
    }
}

/// Calls `detect` with an inherited hand-off in the environment, after
/// starting a second thread when `thread` is set; reports what happened.
fn child(thread: bool) -> ExitCode {
    let (hold, wait) = std::sync::mpsc::channel::<()>();
    let second = thread.then(|| std::thread::spawn(move || wait.recv()));
    match Handoff::detect("LIFECYCLE") {
        Ok(handoff) => println!("detected {}", handoff.mode()),
        Err(err @ Error::ThreadsRunning { threads, mode }) => {
            println!("refused threads={threads} mode={mode}");
            println!("message {err}");
        }
        Err(err) => println!("other error {err}"),
    }
    let left = std::env::var_os("LIFECYCLE_PARENT_PID").is_some();
    println!("variables left {left}");
    drop(hold);
    if let Some(second) = second {
        let _ = second.join();
    }
    ExitCode::SUCCESS
}

fn run(role: &str) -> String {
    // An empty inherited hand-off addressed to the child (its parent is us).
    let vars = ChildHandoff::new(
        &Inventory::default(),
        &VarNames::default(),
        std::process::id(),
    )
    .vars;
    let out = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .envs(vars)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{role} child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn detect_refuses_in_a_multi_threaded_process() {
    let out = run("two-threads");
    assert!(
        out.contains(&format!("refused threads=2 mode={}", Mode::Inherited)),
        "{out}"
    );
    assert!(
        out.contains("call Handoff::detect first thing in main, before any thread"),
        "{out}"
    );
    assert!(out.contains("variables left true"), "{out}");

    let out = run("one-thread");
    assert!(out.contains("detected inherited"), "{out}");
    assert!(out.contains("variables left false"), "{out}");
}
