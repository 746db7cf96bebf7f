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

/// How the gateway is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Binds its own listeners and serves in one process.
    Immediate,
    /// Started as root with `user = "nobody"`: the root parent binds and
    /// spawns the unprivileged child that serves.
    Privileged,
}

/// The user the privileged mode drops to.
const UNPRIVILEGED: &str = "nobody";

impl Gateway {
    /// Writes a config (one SMTP listener with backlog 1024 on a free
    /// port, `spool`) into `dir` and starts `bin` with it; returns once the
    /// SMTP greeting arrived, with the time from exec to greeting.
    pub(crate) fn start(bin: &Path, dir: &Path, spool: &Path, mode: Mode) -> Res<(Self, Duration)> {
        Self::start_with(bin, dir, spool, mode, "")
    }

    /// [`start`](Self::start) with `extra` configuration lines before the
    /// listener: top-level keys, then tables such as `[limits]`.
    pub(crate) fn start_with(
        bin: &Path,
        dir: &Path,
        spool: &Path,
        mode: Mode,
        extra: &str,
    ) -> Res<(Self, Duration)> {
        let port = lifecycle_tests::free_port()?;
        let smtp = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = dir.join("gateway.toml");
        let who = match mode {
            // The bench runs as root on CI machines.
            Mode::Immediate => "allow_root = true\n".to_string(),
            Mode::Privileged => {
                prepare_for_unprivileged(dir, spool)?;
                format!("user = \"{UNPRIVILEGED}\"\n")
            }
        };
        std::fs::write(
            &config,
            format!(
                "spool_dir = {spool:?}\n\
                 {who}\
                 {extra}\
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
        if mode == Mode::Privileged {
            gateway.check_unprivileged_child()?;
        }
        Ok((gateway, took))
    }

    /// In privileged mode the greeting must come from a child running as
    /// [`UNPRIVILEGED`]; a gateway that ignored `user` and served as root
    /// would make the figure meaningless.
    fn check_unprivileged_child(&self) -> Res<()> {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let uid = nix::unistd::User::from_name(UNPRIVILEGED)?
            .ok_or(format!("no user {UNPRIVILEGED} on this machine"))?
            .uid
            .as_raw();
        for child in children.split_whitespace() {
            let status =
                std::fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
            let real_uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            if real_uid == Some(uid) {
                return Ok(());
            }
        }
        Err(format!(
            "no child of the gateway runs as {UNPRIVILEGED}: privileged mode (root parent, \
             unprivileged child) is not supported by this gateway build"
        )
        .into())
    }

    /// The process id (in immediate mode, the serving process).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
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

/// Lets the unprivileged child read the config in `dir` and write `spool`.
fn prepare_for_unprivileged(dir: &Path, spool: &Path) -> Res<()> {
    use std::os::unix::fs::PermissionsExt;
    let user = nix::unistd::User::from_name(UNPRIVILEGED)?
        .ok_or(format!("no user {UNPRIVILEGED} on this machine"))?;
    // The temporary directories between the system's temporary directory
    // and `dir` are private to root; nothing outside it is touched. (Not
    // under the target directory: a checkout in a 0700 home would keep the
    // service user out.)
    let root = std::env::temp_dir();
    let root = root.as_path();
    for p in dir
        .ancestors()
        .take_while(|p| p.starts_with(root) && *p != root)
    {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::create_dir_all(spool)?;
    nix::unistd::chown(spool, Some(user.uid), Some(user.gid))?;
    Ok(())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
