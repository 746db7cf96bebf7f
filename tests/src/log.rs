//! A process's log followed line by line from a pipe, by a thread, so that
//! a test can wait for a line instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Set when the pipe reached its end (every writer exited or closed
    /// it): the log will not grow any more.
    ended: AtomicBool,
}

/// The lines a process wrote to a pipe (its stderr, usually), collected by
/// a thread as they come.
///
/// Every wait returns at once when the log has ended without what it waits
/// for: a process that died does not cost the test its whole timeout.
///
/// ```
/// use lifecycle_tests::LogFollower;
/// use std::time::Duration;
///
/// let log = LogFollower::new(&b"starting\nready\n"[..]);
/// assert_eq!(log.wait(Duration::from_secs(5), |l| l == "ready").as_deref(), Some("ready"));
/// assert!(log.wait_end(Duration::from_secs(5)));
/// assert_eq!(log.wait(Duration::from_secs(60), |l| l == "never"), None);
/// assert_eq!(log.lines(), ["starting", "ready"]);
/// ```
#[derive(Debug, Clone)]
pub struct LogFollower {
    log: Arc<Lines>,
}

impl LogFollower {
    /// Follows `pipe` on a new thread until its end.
    pub fn new(pipe: impl Read + Send + 'static) -> LogFollower {
        let log = Arc::new(Lines::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().push(line);
                sink.grew.notify_all();
            }
            let _lines = sink.lock();
            sink.ended.store(true, Ordering::SeqCst);
            sink.grew.notify_all();
        });
        LogFollower { log }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().clone()
    }

    /// The number of lines so far.
    pub fn len(&self) -> usize {
        self.log.lock().len()
    }

    /// Whether no line came yet.
    pub fn is_empty(&self) -> bool {
        self.log.lock().is_empty()
    }

    /// Whether the log has ended (the writer closed the pipe).
    pub fn ended(&self) -> bool {
        self.log.ended.load(Ordering::SeqCst)
    }

    /// Every line, joined (for failure messages; prefer
    /// [`tail`](Self::tail) for long logs).
    pub fn text(&self) -> String {
        self.log.lock().join("\n")
    }

    /// The last `n` lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.log.lock();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many lines from index `from` on satisfy `pred`.
    pub fn count_since(&self, from: usize, pred: impl Fn(&str) -> bool) -> usize {
        self.log
            .lock()
            .iter()
            .skip(from)
            .filter(|l| pred(l))
            .count()
    }

    /// Waits at most `timeout` for a line matching `pred` (the first one
    /// from the start); `None` at once when the log has ended without one.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut seen = 0;
        let mut found = None;
        self.wait_until(timeout, |lines| {
            found = lines[seen..].iter().find(|l| pred(l)).cloned();
            seen = lines.len();
            found.is_some()
        });
        found
    }

    /// Waits at most `timeout` until `count` lines satisfy `pred`; returns
    /// the number that do (a log is written behind the events it tells).
    pub fn wait_count(
        &self,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        let mut seen = 0;
        let mut matched = 0;
        self.wait_until(timeout, |lines| {
            matched += lines[seen..].iter().filter(|l| pred(l)).count();
            seen = lines.len();
            matched >= count
        });
        matched
    }

    /// Waits at most `timeout` until the log has ended and every line was
    /// read; false on timeout.
    pub fn wait_end(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |_| false);
        self.ended()
    }

    /// Calls `done` on the lines each time they grow, until it says true,
    /// the log ends or `timeout` passes.
    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lock();
        loop {
            if done(&lines) {
                return;
            }
            let now = Instant::now();
            // A log that has ended will not grow.
            if now >= deadline || self.ended() {
                return;
            }
            lines = self
                .log
                .grew
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Lines {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
