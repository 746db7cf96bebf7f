//! The deploy units under a real systemd (issue 17): Debian 12's systemd
//! booted with `systemd-nspawn` over a cached root file system (see
//! `lifecycle_tests::Container`), the gateway installed exactly as
//! `deploy/README.md` tells an operator (its `sh` blocks are run as they
//! are, minus the `cargo build` line), then driven with `systemctl` and
//! checked with real clients (the host's `swaks` and `curl` in the
//! container's network namespace), `systemctl show` and the journal.
//!
//! One container per unit, the cases one after the other in it, the last
//! a reboot (the container boots a writable overlay of the cached root, so
//! a second boot finds the installed units). Files: `systemd_real/rig.rs`
//! (the installed container), `overlay.rs` (the writable root it boots),
//! `cases.rs`, `sessions.rs` (open sessions, the watchdog), `looper.rs` (a
//! looping client), `reboot.rs`. Skips (or, under `scripts/test` as root,
//! fails) where nspawn cannot boot.
//!
//! Run alone: `cargo test -p lifecycle-tests --test systemd_real -- --nocapture`
//! (builds the root file system first if `<target>/nspawn-root` has none).

#[path = "systemd_real/cases.rs"]
mod cases;
#[path = "systemd_real/looper.rs"]
mod looper;
#[path = "systemd_real/overlay.rs"]
mod overlay;
#[path = "systemd_real/reboot.rs"]
mod reboot;
#[path = "systemd_real/rig.rs"]
mod rig;
#[path = "systemd_real/sessions.rs"]
mod sessions;

use std::time::Instant;

use lifecycle_tests::loud;

use cases::*;
use reboot::reboot_and_deliver;
use rig::{rig, Rig, Setup};
use sessions::{stop_with_open_sessions, watchdog_under_load};

/// One case, run on a booted rig.
type Case = fn(&Rig);

/// One booted container at a time. With three at once, the kernel here
/// (hybrid cgroups, lazy RCU) sometimes keeps a stopped gateway's exited
/// threads in the unit's cgroup for longer than `TimeoutStopSec=`, and
/// systemd, which with `ExitType=cgroup` waits for "control group empty",
/// ends the stop with `Result=timeout` though no process is left (see the
/// known failure described in deploy/README.md). One at a time, 300
/// stop-after-reload rounds passed twice in a row.
static ONE_CONTAINER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_cases(setup: Setup) {
    let _one = ONE_CONTAINER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(mut r) = rig(setup) else {
        return;
    };
    let cases: [(&str, Case); 8] = [
        ("start and deliver", start_and_deliver),
        ("stop with open sessions", stop_with_open_sessions),
        ("reload with a good binary", reload_good),
        ("reload with a failing binary", reload_failing),
        ("stop right after a reload", stop_after_reload),
        ("watchdog: a hang, then load", watchdog_under_load),
        ("SIGKILL restarts", kill_restarts),
        ("sandbox", sandbox_holds),
    ];
    for (name, case) in cases {
        let t = Instant::now();
        case(&r);
        loud(&format!("{setup:?}: {name}: ok ({:?})", t.elapsed()));
    }
    r.assert_no_seccomp_kill();
    // Last: it replaces the container.
    let t = Instant::now();
    reboot_and_deliver(&mut r);
    loud(&format!("{setup:?}: reboot: ok ({:?})", t.elapsed()));
    r.assert_no_seccomp_kill();
}

#[test]
fn privileged_start_unit_under_systemd() {
    run_cases(Setup::Privileged);
}

#[test]
fn cap_net_bind_service_drop_in_under_systemd() {
    run_cases(Setup::CapDropIn);
}

#[test]
fn socket_activated_unit_under_systemd() {
    run_cases(Setup::Activated);
}
