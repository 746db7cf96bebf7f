//! Starting, reloading, stopping, killing, and the sandbox.

use std::time::{Duration, Instant};

use lifecycle_tests::{json_number, loud};

use crate::looper::Looper;
use crate::rig::*;

pub(crate) fn start_and_deliver(r: &Rig) {
    assert!(r.deliver("first message"), "{}", r.journal());
    assert!(r.spool_has("first message"), "not in {}", r.spool);
    r.wait_for("a STATUS= line", |r| !r.prop("StatusText").is_empty());
}

pub(crate) fn reload_good(r: &Rig) {
    let before = r.generation().expect("lifecycle_generation on /metrics");
    let looper = Looper::start(&r.c);
    r.wait_for("the looping client being greeted", |_| looper.greeted() > 5);
    let (ok, out) = r.reload_with("/src/target/release/lifecycle-gateway");
    assert!(ok, "systemctl reload: {out}");
    r.wait_for("the next generation serving", |r| {
        r.generation() == Some(before + 1)
    });
    let seen = looper.greeted();
    r.wait_for("more greetings after the reload", |_| {
        looper.greeted() > seen + 5
    });
    let (greeted, failed, errors) = looper.finish();
    loud(&format!(
        "{}: reload {before} -> {}: {greeted} greetings, {failed} failures",
        r.unit,
        before + 1
    ));
    assert_eq!(failed, 0, "refused or broken during the reload: {errors:?}");
    assert!(r.deliver("after a good reload"), "{}", r.journal());
    // The lines reach the journal behind the events the test saw (and the
    // successor names itself only once its predecessor exited).
    r.wait_for("the upgrade in the journal", |r| {
        let journal = r.journal();
        journal.contains("upgrade succeeded")
            && (r.setup == Setup::Privileged
                || journal.contains("main process announced: the predecessor exited"))
    });
    let journal = r.journal();
    if r.setup != Setup::Privileged {
        // The old process logs under the generation its successor names as
        // the one it took over from (it used to log generation 0).
        let line = journal
            .lines()
            .find(|l| l.contains(r#""msg":"upgrade succeeded""#))
            .unwrap_or_else(|| panic!("no upgrade succeeded line:\n{journal}"));
        let (from, to) = (json_number(line, "from"), json_number(line, "to"));
        assert_eq!(json_number(line, "generation"), from, "{line}");
        assert_eq!(
            (from, to),
            (Some(before as i64), Some(before as i64 + 1)),
            "{line}"
        );
        assert!(
            journal.contains("main process announced: the predecessor exited"),
            "the successor did not name itself:\n{journal}"
        );
        assert!(
            !journal.contains("which is not our child")
                && !journal.contains("reception only permitted"),
            "{journal}"
        );
    } else {
        assert!(journal.contains("upgrade succeeded"), "{journal}");
    }
    r.wait_active();
}

pub(crate) fn reload_failing(r: &Rig) {
    let before = r.generation().expect("lifecycle_generation on /metrics");
    let pid = r.prop("MainPID");
    let (reload_ok, out) = r.reload_with("/stage/failing-gateway");
    // Every setup's ExecReload= is `ctl upgrade --wait` (served by the
    // root parent, or by the serving process itself without one): the
    // failed upgrade fails `systemctl reload`, with ctl's reason in the
    // journal.
    loud(&format!(
        "{}: reload with a failing binary: systemctl reload succeeded={reload_ok} {}",
        r.unit,
        out.trim()
    ));
    assert!(!reload_ok, "systemctl reload must fail: {out}");
    r.wait_for("ctl's reason in the journal", |r| {
        let journal = r.journal();
        journal.contains("exited with code 3") && journal.contains("keeps serving")
    });
    r.wait_for("the failed upgrade in the journal", |r| {
        r.journal().contains("upgrade failed")
    });
    assert_eq!(r.generation(), Some(before), "the old generation serves");
    assert_eq!(r.prop("MainPID"), pid, "the main process stays");
    assert!(r.deliver("after a failed reload"), "{}", r.journal());
    r.wait_active();
    // Put the good binary back for the next cases.
    r.c.sh(
        "install -m 0755 /src/target/release/lifecycle-gateway /usr/local/bin/lifecycle-gateway",
    )
    .unwrap();
}

/// Stops the unit right after a reload `STOP_ROUNDS` times per order of
/// units on the command line: `Result=success` every time.
pub(crate) fn stop_after_reload(r: &Rig) {
    let orders: Vec<Vec<&str>> = if r.unit == ACTIVATED {
        vec![
            [ACTIVATED].into_iter().chain(SOCKETS).collect(),
            SOCKETS.into_iter().chain([ACTIVATED]).collect(),
        ]
    } else {
        vec![vec![PRIVILEGED]]
    };
    // systemd's debug lines for the unit ("Main process exited", "Control
    // group is empty", state changes) go to its journal, which a failure
    // prints.
    r.c.sh("systemd-analyze set-log-level debug").unwrap();
    for order in &orders {
        let rounds: usize = std::env::var("LIFECYCLE_STOP_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(STOP_ROUNDS);
        for round in 0..rounds {
            let before = r.generation().expect("lifecycle_generation");
            let old = r.prop("MainPID");
            let (ok, out) = r.c.sh_status(&format!("systemctl reload {}", r.unit));
            assert!(ok, "{out}");
            // (A failed upgrade may have used a number: greater, not + 1.)
            r.wait_for("a newer generation serving", |r| {
                r.generation().is_some_and(|g| g > before)
            });
            if r.setup != Setup::Privileged {
                // The old process has drained and exited: the state in
                // which systemd used to SIGKILL the successor.
                r.wait_for("the old process gone", |r| {
                    !r.c.sh_status(&format!("kill -0 {old}")).0
                });
            }
            // A stop that hangs is looked at while it hangs (who is still
            // in the unit's cgroup, and in which state), not after systemd
            // gave up on it. (A blocking `systemctl stop`, as an operator
            // types it: polling the state of a --no-block stop and starting
            // at once made starts fail with 219/CGROUP here.)
            let mut hanging = None;
            let (ok, out) = std::thread::scope(|scope| {
                let stop = scope.spawn(|| {
                    r.c.sh_status(&format!("systemctl stop {}", order.join(" ")))
                });
                let begun = Instant::now();
                while !stop.is_finished() {
                    if hanging.is_none() && begun.elapsed() > LOOK_AT_A_STOP {
                        hanging = Some(r.c.diagnose(r.unit));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                stop.join().expect("the stop thread panicked")
            });
            assert!(ok, "{out}");
            let s = r.show();
            assert_eq!(
                (s["Result"].as_str(), s["ExecMainStatus"].as_str()),
                ("success", "0"),
                "round {round}, stop {order:?}: {s:?}\n{}\n== while the stop hung:\n{}",
                r.journal(),
                hanging.as_deref().unwrap_or("(it did not hang)")
            );
            assert_eq!(s["ActiveState"], "inactive", "{s:?}");
            r.start();
        }
    }
    r.c.sh("systemd-analyze set-log-level info").unwrap();
    assert!(
        !r.journal().contains("signal SIGKILL"),
        "something was killed:\n{}",
        r.journal()
    );
}

pub(crate) fn kill_restarts(r: &Rig) {
    let restarts: u64 = r.prop("NRestarts").parse().unwrap();
    let acked: Vec<String> = (0..5)
        .map(|i| format!("acked before the kill {i}"))
        .filter(|b| r.deliver(b))
        .collect();
    assert_eq!(acked.len(), 5, "{}", r.journal());
    let old = r.prop("MainPID");
    let (ok, out) =
        r.c.sh_status(&format!("systemctl kill -s SIGKILL {}", r.unit));
    assert!(ok, "{out}");
    r.wait_for("a restart", |r| {
        let s = r.show();
        s["NRestarts"].parse::<u64>().unwrap_or(0) == restarts + 1
            && s["SubState"] == "running"
            && s["MainPID"] != old
    });
    for body in &acked {
        assert!(r.spool_has(body), "acknowledged but lost: {body}");
    }
    assert!(r.deliver("after the restart"), "{}", r.journal());
}

pub(crate) fn sandbox_holds(r: &Rig) {
    r.c.sh("echo secret > /root/secret").unwrap();
    let serving = r.serving_pid();
    let status = r.c.sh(&format!("cat /proc/{serving}/status")).unwrap();
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        // The drop-in's process holds CAP_NET_BIND_SERVICE (bit 10) and
        // nothing else; the others none at all. The privileged child's
        // bounding set is the parent's (setuid cleared the rest).
        let expected = if r.setup == Setup::CapDropIn {
            "0000000000000400"
        } else {
            "0000000000000000"
        };
        if key != "CapBnd:" || r.setup == Setup::Activated {
            assert!(
                line.ends_with(expected),
                "serving process capabilities: {line}, expected {expected}"
            );
        }
    }
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_owned();
    assert_ne!(uid, "0", "serving as root");
    // Its view of the file system, as its user: /root is not readable.
    let (read, out) = r.c.sh_status(&format!(
        "nsenter -t {serving} -m -S {uid} -G {uid} -- cat /root/secret"
    ));
    assert!(!read, "the serving process read /root: {out}");
    r.assert_no_seccomp_kill();
}
