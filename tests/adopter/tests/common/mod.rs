//! Running an adopter program and talking to it.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long anything may take before the test gives up.
pub const GENEROUS: Duration = Duration::from_secs(20);

/// A running program: its stdout lines until `stop_at`, and the child.
pub struct Program {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
}

impl Program {
    /// Starts `bin` with `args`, stderr piped.
    pub fn start(bin: &str, args: &[&str]) -> Program {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the program");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Program { child, stdout }
    }

    /// The next stdout line (empty at end of output).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read stdout");
        line.trim_end().to_owned()
    }

    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    }

    /// Waits for the exit (at most [`GENEROUS`]); returns status and stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + GENEROUS;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "the program did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
