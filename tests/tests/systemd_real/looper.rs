//! A client looping on port 25 inside the container.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lifecycle_tests::Container;

/// Connects to port 25 in the container's network namespace in a loop
/// and reads the greeting; counts greetings and failures.
pub(crate) struct Looper {
    stop: Arc<AtomicBool>,
    greeted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Looper {
    pub(crate) fn start(c: &Container) -> Looper {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", c.init_pid())).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let greeted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, g, f) = (stop.clone(), greeted.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // This thread only: the test's other threads stay on the host.
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let greeting = TcpStream::connect(("127.0.0.1", 25)).and_then(|stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut line = String::new();
                    BufReader::new(stream).read_line(&mut line)?;
                    Ok(line)
                });
                match greeting {
                    Ok(line) if line.starts_with("220 ") => {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        });
        Looper {
            stop,
            greeted,
            failed,
            thread: Some(thread),
        }
    }

    pub(crate) fn greeted(&self) -> u64 {
        self.greeted.load(Ordering::Relaxed)
    }

    pub(crate) fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        (
            self.greeted.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}
