//! Upgrades under the supervisor: continuous connections, failed
//! upgrades, a child that dies after ready, a new child's grace.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifecycle_handoff::TargetUser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{field, load, replace_binary, replace_with_script, rotate, Parent};
use crate::{CHILD_GRACE_MS, CHILD_HANG, CHILD_READY_EXIT, FILE, READY_TIMEOUT_MS, TIMEOUT, USER};

pub(crate) fn upgrades_under_continuous_connections(user: Option<&str>) {
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

pub(crate) fn failed_upgrades_keep_the_old_child_serving() {
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
pub(crate) fn a_child_that_dies_right_after_ready_is_a_failed_upgrade() {
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
pub(crate) fn a_new_child_told_to_stop_gets_its_grace() {
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
