//! The lifecycle-gateway binary: start (exec to ready), stop (SIGTERM to
//! exit) and SMTP with its fsync'd spool.

use crate::accept::Running;
use crate::Res;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the gateway may take to become ready or to exit before the
/// bench gives up (a hang bound, not a target).
const PATIENCE: Duration = Duration::from_secs(30);
/// Pause between connection attempts while waiting for the greeting.
const POLL: Duration = Duration::from_micros(200);

/// Where the gateway binary is: `--gateway PATH`, else next to the
/// bench's own profile directory (`target/release/lifecycle-gateway` for
/// `cargo bench`).
pub(crate) fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("lifecycle-gateway");
    candidate.is_file().then_some(candidate)
}

/// A running gateway process, killed on drop if it still runs.
pub(crate) struct Gateway {
    child: Child,
    pub(crate) smtp: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    /// Writes a config (one SMTP listener with backlog 1024 on a free
    /// port, `spool`) into `dir` and starts `bin` with it; returns once the
    /// SMTP greeting arrived, with the time from exec to greeting.
    pub(crate) fn start(bin: &Path, dir: &Path, spool: &Path) -> Res<(Self, Duration)> {
        let port = lifecycle_tests::free_port()?;
        let smtp = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "spool_dir = {spool:?}\n\
                 # immediate mode: the bench runs as root on CI machines\n\
                 allow_root = true\n\
                 \n\
                 [[listener]]\n\
                 name = \"smtp\"\n\
                 protocol = \"smtp\"\n\
                 address = \"{smtp}\"\n\
                 backlog = {backlog}\n",
                spool = spool.display().to_string(),
                backlog = crate::listen::BACKLOG,
            ),
        )?;
        let log = dir.join("gateway.log");
        let log_file = std::fs::File::create(&log)?;
        let start = Instant::now();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut gateway = Gateway { child, smtp, log };
        let took = gateway.wait_greeting(start)?;
        Ok((gateway, took))
    }

    /// Connects until the SMTP greeting arrives, then says QUIT.
    fn wait_greeting(&mut self, start: Instant) -> Res<Duration> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "the gateway exited ({status}) before greeting; its log:\n{}",
                    self.log_text()
                )
                .into());
            }
            if start.elapsed() > PATIENCE {
                return Err(format!(
                    "no SMTP greeting within {PATIENCE:?}; log:\n{}",
                    self.log_text()
                )
                .into());
            }
            let Ok(stream) = TcpStream::connect(self.smtp) else {
                std::thread::sleep(POLL);
                continue;
            };
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let took = start.elapsed();
            if !line.starts_with("220") {
                return Err(format!("expected an SMTP 220 greeting, got {line:?}").into());
            }
            // Leave the gateway idle: QUIT, then read until it closes.
            (&stream).write_all(b"QUIT\r\n")?;
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut rest)?;
            return Ok(took);
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the time until the process exited (status must be 0).
    pub(crate) fn stop(mut self) -> Res<Duration> {
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        let start = Instant::now();
        kill(pid, Signal::SIGTERM)?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let took = start.elapsed();
                if !status.success() {
                    return Err(format!(
                        "the gateway exited with {status} after SIGTERM; log:\n{}",
                        self.log_text()
                    )
                    .into());
                }
                return Ok(took);
            }
            if start.elapsed() > PATIENCE {
                return Err(
                    format!("the gateway did not exit within {PATIENCE:?} of SIGTERM").into(),
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// As a [`Running`] server for the SMTP load (stopped by SIGTERM).
    pub(crate) fn into_running(self) -> Running {
        let addr = self.smtp;
        Running::new(addr, move || self.stop().map(|_| ()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
