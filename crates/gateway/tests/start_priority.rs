//! An upgrade's new child starts at a lower priority (nice + 10, under
//! `SCHED_IDLE`) so that its start-up yields to the serving generation and
//! its clients, and the root parent sets every one of its threads back once
//! it is ready, or after one second if it is not ready by then. The first
//! child starts at the parent's priority. The parent serves a control
//! request under `SCHED_IDLE` too and is set back after it. As root
//! (skipped with a printed reason otherwise).

mod common;

use common::ctl::{ctl, json};
use common::upgrading::{replace_with_slow_gateway, Setup};
use common::{number, SOON};
use lifecycle_tests::{loud, require_root};
use nix::sys::signal::Signal;

/// `SCHED_OTHER` and `SCHED_IDLE` as `/proc/<pid>/stat` shows them.
const OTHER: i32 = 0;
const IDLE: i32 = 5;

/// The nice value and scheduling policy of every thread of `pid`, from
/// `/proc/<pid>/task/*/stat`.
fn thread_nices(pid: u32) -> Vec<(u32, i32, i32)> {
    let mut nices = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited meanwhile
        };
        // After the command name in parentheses: state is field 3, nice
        // field 19, policy field 41 (proc(5)).
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let nice = fields[16].parse().unwrap();
        let policy = fields[38].parse().unwrap();
        let tid = entry.file_name().to_str().unwrap().parse().unwrap();
        nices.push((tid, nice, policy));
    }
    nices
}

/// The pid of generation `generation`, from its "service started" line.
fn started(gw: &common::Gateway, generation: u64) -> u32 {
    let line = gw
        .wait_log(SOON, |l| {
            l.contains(r#""msg":"service started""#)
                && l.contains(&format!(r#""generation":{generation}"#))
        })
        .unwrap_or_else(|| panic!("generation {generation} not started:\n{}", gw.log_text()));
    u32::try_from(number(&line, "child").unwrap()).unwrap()
}

/// Starts the gateway, checks the first child's priority, upgrades to a
/// binary that reports ready `delay` after it accepts, and checks that the
/// candidate runs at nice + 10 under SCHED_IDLE before that. Returns the
/// gateway, the candidate's pid and the parent's nice value.
fn upgrade_to_a_slow_candidate(delay: &str) -> Option<(common::Gateway, u32, i32)> {
    if !require_root("the privileged start with upgrades") {
        return None;
    }
    let (setup, _) = Setup::new();
    let bin = setup.bin.clone();
    let gw = setup.start();
    let (_, parent_nice, parent_policy) = thread_nices(gw.pid())[0];
    assert_eq!(parent_policy, OTHER);
    let first = started(&gw, 1);
    let first_nices = thread_nices(first);
    assert!(
        first_nices
            .iter()
            .all(|(_, n, p)| *n == parent_nice && *p == OTHER),
        "the first child runs at the parent's nice {parent_nice}, SCHED_OTHER: {first_nices:?}"
    );

    // The next binary reports ready only after `delay` (it accepts at
    // once): long enough to look at it while it is a candidate.
    replace_with_slow_gateway(gw.dir(), &bin, delay);
    gw.signal(Signal::SIGHUP);
    let second = started(&gw, 2);
    gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"ready""#) && l.contains(r#""generation":2"#)
    })
    .unwrap_or_else(|| panic!("generation 2 does not accept:\n{}", gw.log_text()));
    let before = thread_nices(second);
    loud(&format!(
        "start priority: parent nice {parent_nice}; generation 2 threads before ready {before:?}"
    ));
    assert!(
        before.len() > 1,
        "a serving child has several threads: {before:?}"
    );
    assert!(
        before
            .iter()
            .all(|(_, n, p)| *n == parent_nice + 10 && *p == IDLE),
        "a candidate runs at nice {}, SCHED_IDLE, before it is ready: {before:?}",
        parent_nice + 10
    );
    // The parent did its share of the start under SCHED_IDLE and is back.
    assert_parent_back(
        gw.pid(),
        parent_nice,
        "the parent's threads, after the start",
    );
    Some((gw, second, parent_nice))
}

/// Every thread of `pid` at `nice` under SCHED_OTHER.
fn assert_normal(pid: u32, nice: i32, when: &str) {
    let after = thread_nices(pid);
    loud(&format!("start priority: {when}: {after:?}"));
    assert!(
        after.iter().all(|(_, n, p)| *n == nice && *p == OTHER),
        "every thread is back at nice {nice}, SCHED_OTHER, {when}: {after:?}"
    );
}

/// The parent's threads back at `nice` under SCHED_OTHER within [`SOON`]:
/// it logs its events while it still does its share of the upgrade under
/// SCHED_IDLE, so the log line seen may come just before it is back.
fn assert_parent_back(pid: u32, nice: i32, when: &str) {
    let deadline = std::time::Instant::now() + SOON;
    let mut seen = thread_nices(pid);
    while !seen.iter().all(|(_, n, p)| *n == nice && *p == OTHER)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
        seen = thread_nices(pid);
    }
    assert_normal(pid, nice, when);
}

#[test]
fn a_new_child_starts_at_a_lower_priority_and_is_set_back_once_ready() {
    // Ready within the limit (1 s): set back when it reports ready.
    let Some((gw, second, nice)) = upgrade_to_a_slow_candidate("400ms") else {
        return;
    };
    let restored = gw
        .wait_log(SOON, |l| l.contains("back at the normal priority"))
        .unwrap_or_else(|| panic!("no priority restored:\n{}", gw.log_text()));
    assert!(restored.contains("is ready"), "{restored}");
    assert_normal(second, nice, "generation 2 threads once ready");
    assert_parent_back(gw.pid(), nice, "the parent's threads, after the promote");
}

#[test]
fn a_candidate_not_ready_within_a_second_gets_the_normal_priority_back_early() {
    // A busy machine, as the child sees it: not ready for 3 s. After 1 s
    // the parent lifts its priority, then the upgrade completes as usual.
    let Some((gw, second, nice)) = upgrade_to_a_slow_candidate("3s") else {
        return;
    };
    let lifted = gw
        .wait_log(SOON, |l| l.contains("at the lower start priority"))
        .unwrap_or_else(|| panic!("priority not lifted:\n{}", gw.log_text()));
    assert!(lifted.contains("not ready after 1s"), "{lifted}");
    assert_normal(
        second,
        nice,
        "generation 2 threads after the lift, before ready",
    );
    gw.wait_log(SOON, |l| l.contains(r#""msg":"upgrade succeeded""#))
        .unwrap_or_else(|| panic!("the upgrade did not complete:\n{}", gw.log_text()));
    assert_normal(second, nice, "generation 2 threads once ready");
    assert_parent_back(gw.pid(), nice, "the parent's threads, after the promote");
    assert!(
        !gw.log_text().contains("is ready: its"),
        "the priority is restored once, not again at ready:\n{}",
        gw.log_text()
    );
}

#[test]
fn an_upgrade_through_the_control_socket_leaves_every_thread_at_the_normal_priority() {
    // The parent reads and answers control requests, and handles every
    // wake-up while the candidate runs, under SCHED_IDLE: the candidate is
    // still set back to the parent's normal priority, not to SCHED_IDLE,
    // and so is the parent after each.
    if !require_root("the privileged start with a control socket") {
        return;
    }
    let (setup, _) = Setup::new();
    let (gw, socket) = setup.start_controlled();
    let (_, nice, policy) = thread_nices(gw.pid())[0];
    assert_eq!(policy, OTHER);
    for to in 2u64..=3 {
        let out = ctl(&socket, &["upgrade", "--wait", "--json"]);
        assert!(out.status.success(), "{out:?}\n{}", gw.log_text());
        let reply = json(&out);
        assert_eq!(reply["to"], to, "{reply}");
        let pid = started(&gw, to);
        assert_normal(pid, nice, &format!("generation {to} threads once ready"));
        assert_parent_back(gw.pid(), nice, "the parent's threads, after ctl upgrade");
    }
    let status = json(&ctl(&socket, &["status", "--json"]));
    assert_eq!(status["generation"], 3, "{status}");
    assert_parent_back(gw.pid(), nice, "the parent's threads, after ctl status");
}
