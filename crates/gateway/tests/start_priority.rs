//! An upgrade's new child starts at a lower priority (nice + 10, under
//! `SCHED_IDLE`) so that
//! its start-up yields to the serving generation and its clients, and the
//! root parent sets every one of its threads back once it is ready. The
//! first child starts at the parent's priority. As root (skipped with a
//! printed reason otherwise).

mod common;

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

#[test]
fn a_new_child_starts_at_a_lower_priority_and_is_set_back_once_ready() {
    if !require_root("the privileged start with upgrades") {
        return;
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

    // The next binary reports ready only after a while (it accepts at
    // once): long enough to look at it while it is a candidate.
    replace_with_slow_gateway(gw.dir(), &bin, "2s");
    gw.signal(Signal::SIGHUP);
    let second = started(&gw, 2);
    gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"ready""#) && l.contains(r#""generation":2"#)
    })
    .unwrap_or_else(|| panic!("generation 2 does not accept:\n{}", gw.log_text()));
    let before = thread_nices(second);
    let restored = gw
        .wait_log(SOON, |l| l.contains("back at the normal priority"))
        .unwrap_or_else(|| panic!("no priority restored:\n{}", gw.log_text()));
    let after = thread_nices(second);
    loud(&format!(
        "start priority: parent nice {parent_nice}; generation 2 threads before ready \
         {before:?}, after {after:?}; {restored}"
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
    assert!(
        after
            .iter()
            .all(|(_, n, p)| *n == parent_nice && *p == OTHER),
        "every thread is back at nice {parent_nice}, SCHED_OTHER, once ready: {after:?}"
    );
}
