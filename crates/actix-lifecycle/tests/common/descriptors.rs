//! Running this very process out of file descriptors, for the tests of
//! what a listener does on EMFILE. The soft limit is lowered with
//! prlimit(1) (util-linux), so a test file that uses this holds a single
//! test.

use std::process::Command;

/// Whether prlimit(1) is installed (the tests skip without it).
pub fn prlimit_available() -> bool {
    Command::new("prlimit").arg("--version").output().is_ok()
}

/// This process out of descriptors: the soft limit lowered to one above
/// the highest open descriptor and every free number below it filled, so
/// the next open fails with EMFILE. Dropping it restores the limit, then
/// frees the fillers.
pub struct OutOfDescriptors {
    saved: String,
    fillers: Vec<std::fs::File>,
}

impl OutOfDescriptors {
    /// Uses up every descriptor this process may open.
    pub fn now() -> OutOfDescriptors {
        let saved = soft_nofile();
        set_soft_nofile(&(max_fd() + 1).to_string());
        let mut fillers = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fillers.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        OutOfDescriptors { saved, fillers }
    }

    /// Gives the descriptors back (the same as dropping it).
    pub fn restore(self) {}
}

impl Drop for OutOfDescriptors {
    fn drop(&mut self) {
        set_soft_nofile(&self.saved);
    }
}

/// The highest open descriptor number.
fn max_fd() -> i32 {
    let fds = lifecycle_tests::ProcStats::new(std::process::id()).fd_numbers();
    *fds.unwrap().last().unwrap()
}

fn set_soft_nofile(soft: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={soft}:"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");
}

/// The soft `RLIMIT_NOFILE`, as /proc/self/limits writes it.
fn soft_nofile() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_owned()
}
