//! The test's side: a parent started from a copy of this binary, the
//! binary replaced as a deployer does, and clients that ask and load.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{ROLE, TIMEOUT};

/// A parent process started from a copy of this binary, its stdout lines
/// collected.
pub(crate) struct Parent {
    pub(crate) child: Child,
    pub(crate) lines: Receiver<String>,
    pub(crate) seen: Vec<String>,
    pub(crate) port: u16,
    pub(crate) binary: PathBuf,
}

impl Parent {
    pub(crate) fn start(dir: &Path, envs: &[(&str, String)]) -> Parent {
        let binary = install_copy(dir);
        let mut command = Command::new(&binary);
        command
            .env(ROLE, "parent")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let mut parent = Parent {
            child,
            lines,
            seen: Vec::new(),
            port: 0,
            binary,
        };
        let line = parent.expect("port ");
        parent.port = line["port ".len()..].parse().unwrap();
        parent
    }

    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Waits for a line containing `needle`; returns it.
    pub(crate) fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn ask(&self) -> String {
        ask(self.address()).unwrap()
    }

    /// Asks until the answer satisfies `done` (an update travels on its own
    /// channel, so it may trail the parent's event line a little).
    pub(crate) fn ask_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let answer = self.ask();
            if done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "last answer {answer}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the parent to exit; returns its code.
    pub(crate) fn finish(mut self) -> (i32, Vec<String>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Every line up to the end of the pipe: the reader thread
                // may still hold the last ones after the exit.
                let end = Instant::now() + TIMEOUT;
                while let Ok(line) = self
                    .lines
                    .recv_timeout(end.saturating_duration_since(Instant::now()))
                {
                    self.seen.push(line);
                }
                return (status.code().unwrap_or(-1), std::mem::take(&mut self.seen));
            }
            assert!(
                Instant::now() < deadline,
                "parent did not exit; saw {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        // Only after a failed assertion: do not leave a parent running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn read_lines(stdout: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Copies this test binary into `dir/bin/` (world-readable and
/// executable, so an unprivileged child can exec it) and returns the path.
pub(crate) fn install_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.join("upgrade-test");
    replace_binary(&path, &std::env::current_exe().unwrap());
    path
}

/// Replaces `target` the way a deployer does: write a new file next to it,
/// then rename it over the old one (the running image stays, `(deleted)`).
pub(crate) fn replace_binary(target: &Path, source: &Path) {
    let staged = target.with_extension("new");
    std::fs::copy(source, &staged).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

pub(crate) fn replace_with_script(target: &Path, script: &str) {
    let staged = target.with_extension("new");
    std::fs::write(&staged, script).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, target).unwrap();
}

/// Writes `content` to `path` as a rotation does: a new file renamed over
/// the old one, so only a re-open sees it.
pub(crate) fn rotate(path: &Path, content: &str, mode: u32) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, content).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// One connection: connect, read the answer line.
pub(crate) fn ask(address: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(line.trim_end().to_owned())
}

pub(crate) fn field<'a>(answer: &'a str, name: &str) -> &'a str {
    answer
        .split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {answer:?}"))
}

/// What the load clients saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) answers: BTreeMap<String, usize>,
    pub(crate) errors: BTreeMap<String, usize>,
}

/// Clients that connect without pause until stopped.
pub(crate) fn load(
    address: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Tally>> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    for _ in 0..clients {
        let stop = Arc::clone(&stop);
        let tally = Arc::clone(&tally);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let result = ask(address);
                let mut tally = tally.lock().unwrap();
                match result {
                    Ok(answer) => {
                        let key = format!(
                            "gen={} file={}",
                            field(&answer, "gen"),
                            field(&answer, "file")
                        );
                        *tally.answers.entry(key).or_default() += 1;
                    }
                    Err(err) => *tally.errors.entry(format!("{:?}", err.kind())).or_default() += 1,
                }
            }
        });
    }
    tally
}
