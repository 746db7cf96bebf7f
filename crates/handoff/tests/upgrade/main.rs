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

mod harness;
mod process;
mod roles;
mod supervised;

use std::process::ExitCode;
use std::time::Duration;

use lifecycle_handoff::Mode;

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

use process::{
    first_child_exit_is_passed_through, killed_parent_takes_the_upgraded_child_down,
    parent_notifies_systemd, successor_takes_over_the_listener,
};
use roles::{parent, serve};
use supervised::{
    a_child_that_dies_right_after_ready_is_a_failed_upgrade,
    a_new_child_told_to_stop_gets_its_grace, failed_upgrades_keep_the_old_child_serving,
    upgrades_under_continuous_connections,
};

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
            lifecycle_tests::exit_after("upgrade", TIMEOUT * 12);
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
