//! Where hand-off variables are read from: the process environment, or a
//! map in tests.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;

/// Where environment variables are read from and removed from.
///
/// The real process environment is [`ProcessEnvironment`]; tests pass a
/// `BTreeMap` or `HashMap` of `(OsString, OsString)` pairs instead.
pub trait Environment {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<OsString>;
    /// Removes `name` (no-op when unset).
    fn remove_var(&mut self, name: &str);
}

/// The environment of this process (`std::env`).
///
/// Removing variables with `std::env::remove_var` is only sound while no
/// other thread reads the environment: detect and take the hand-off at
/// start-up, before spawning threads or starting a runtime.
/// [`Handoff::detect`](crate::Handoff::detect) refuses with
/// [`Error::ThreadsRunning`](crate::Error::ThreadsRunning) when it would
/// remove variables from a multi-threaded process; `remove_var` here
/// checks too and, with more than one thread, leaves the variable set
/// (the hand-off's parent-pid guard still keeps a grandchild from taking
/// it).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn remove_var(&mut self, name: &str) {
        if thread_count().is_some_and(|threads| threads > 1) {
            return;
        }
        std::env::remove_var(name);
    }
}

/// How many threads this process has (`Threads:` in `/proc/self/status`),
/// or `None` where `/proc` cannot tell (not mounted).
pub(crate) fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
}

impl Environment for BTreeMap<OsString, OsString> {
    fn var(&self, name: &str) -> Option<OsString> {
        self.get(OsStr::new(name)).cloned()
    }

    fn remove_var(&mut self, name: &str) {
        self.remove(OsStr::new(name));
    }
}

impl<S: BuildHasher> Environment for HashMap<OsString, OsString, S> {
    fn var(&self, name: &str) -> Option<OsString> {
        self.get(OsStr::new(name)).cloned()
    }

    fn remove_var(&mut self, name: &str) {
        self.remove(OsStr::new(name));
    }
}
