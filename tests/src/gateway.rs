//! The real `lifecycle-gateway` binary as a child process: started on port
//! 0 with a JSON log on stderr, from which its bound addresses, shutdown
//! phases and per-connection lines are read.

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::gateway_config::GatewayConfig;
use crate::log::LogFollower;
use crate::process::ChildGuard;
use crate::procfs::ProcStats;
use crate::service_user::{Installed, ServiceUser};

/// A listener address not learnt yet.
const UNSET: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// How long the gateway may take to log `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds and starts a [`GatewayProcess`].
#[derive(Debug, Clone)]
#[must_use]
pub struct GatewayBuilder {
    bin: PathBuf,
    drain_grace: String,
    abort_grace: String,
    spool_dir: Option<PathBuf>,
    nofile: Option<u64>,
    smtp_extra: String,
    limits: Option<String>,
    lame_duck: String,
    smtp_address: String,
    smtp_listener_extra: String,
    http_address: String,
}

impl GatewayBuilder {
    /// Drain grace as the config writes it (default `"2s"`).
    pub fn drain_grace(mut self, grace: &str) -> Self {
        self.drain_grace = grace.to_owned();
        self
    }

    /// Abort grace as the config writes it (default `"1s"`).
    pub fn abort_grace(mut self, grace: &str) -> Self {
        self.abort_grace = grace.to_owned();
        self
    }

    /// Spool directory (default: `spool` in the process's temporary
    /// directory). Reuse one across starts to test recovery.
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Starts the process with `RLIMIT_NOFILE` set to `limit` (soft and
    /// hard). Default: inherited.
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Extra lines for the `[smtp]` table, e.g. `max_message_size = 1000`.
    pub fn smtp_settings(mut self, lines: &str) -> Self {
        self.smtp_extra = lines.to_owned();
        self
    }

    /// Lame duck as the config writes it (default `"0s"`).
    pub fn lame_duck(mut self, lame_duck: &str) -> Self {
        self.lame_duck = lame_duck.to_owned();
        self
    }

    /// The SMTP listener's address (default `127.0.0.1:0`; a fixed port
    /// lets a restarted instance come back where a load balancer expects
    /// it) and extra lines for its `[[listener]]` table, e.g.
    /// `proxy_protocol = "v2"`.
    pub fn smtp_listener(mut self, address: &str, extra: &str) -> Self {
        self.smtp_address = address.to_owned();
        self.smtp_listener_extra = extra.to_owned();
        self
    }

    /// The HTTP listener's address (default `127.0.0.1:0`).
    pub fn http_address(mut self, address: &str) -> Self {
        self.http_address = address.to_owned();
        self
    }

    /// Lines for the `[limits]` table, e.g. `max_per_address = 100`.
    /// Default: no limit at all (`max_connections = 0`, `max_per_address =
    /// 0`), so that load tests from one address measure what they are
    /// about; the gateway's own defaults apply only to a config without
    /// `[limits]`.
    pub fn limits(mut self, lines: &str) -> Self {
        self.limits = Some(lines.to_owned());
        self
    }

    /// Writes the config, starts the gateway and waits until it logs
    /// `ready`; reads the bound SMTP, IMAP and HTTP addresses from the log.
    pub fn start(self) -> io::Result<GatewayProcess> {
        let dir = crate::paths::temp_dir("gateway")?;
        let spool = self
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        let config = GatewayConfig::new(&spool)
            .lame_duck(&self.lame_duck)
            .drain_grace(&self.drain_grace)
            .abort_grace(&self.abort_grace)
            .smtp(&self.smtp_extra)
            .limits(
                self.limits
                    .as_deref()
                    .unwrap_or("max_connections = 0\nmax_per_address = 0"),
            )
            .listener(
                "smtp",
                "smtp",
                &self.smtp_address,
                &self.smtp_listener_extra,
            )
            .listener("http", "http", &self.http_address, "");
        let config_path = config.write(dir.path())?;
        // As root the gateway would start its privileged parent and serve
        // from a child, so `pid()` and `/proc` would show the wrong process:
        // run it as `nobody` instead (the unprivileged, immediate mode), with
        // its directories handed over to that user.
        let service = ServiceUser::when_root()?;
        // The service user runs a copy of the binary: it may be unable to
        // reach the target directory (a checkout under a 0700 home).
        let installed = match service {
            Some(user) => {
                std::fs::create_dir_all(&spool)?;
                grant(&spool, user.uid(), user.gid())?;
                grant(dir.path(), user.uid(), user.gid())?;
                Some(user.install(&self.bin)?)
            }
            None => None,
        };
        let program = installed.as_ref().map_or(self.bin.as_path(), |i| i.path());
        let mut command = gateway_command(program, &config_path, dir.path());
        if let Some(limit) = self.nofile {
            // SAFETY: the closure runs between fork and exec and makes one
            // async-signal-safe system call (setrlimit) on a value computed
            // before the fork; it allocates nothing and takes no lock. It
            // runs before the drop below: only root may raise a hard limit.
            unsafe {
                command.pre_exec(move || {
                    use nix::sys::resource::{setrlimit, Resource};
                    setrlimit(Resource::RLIMIT_NOFILE, limit, limit).map_err(io::Error::from)
                });
            }
        }
        if let Some(user) = service {
            user.drop_privileges(&mut command);
        }
        let mut gw = GatewayProcess::spawn_command(&mut command, dir)?;
        gw._installed = installed;
        gw.spool = spool;
        if gw
            .wait_log(START_TIMEOUT, |l| l.contains(r#""msg":"ready""#))
            .is_none()
        {
            return Err(io::Error::other(format!(
                "the gateway did not log `ready` (it exited, or not within {START_TIMEOUT:?}); log:\n{}",
                gw.log_text()
            )));
        }
        gw.learn_addresses()?;
        if [gw.smtp, gw.imap, gw.http].contains(&UNSET) {
            return Err(io::Error::other(format!(
                "a listener address is missing from the log:\n{}",
                gw.log_text()
            )));
        }
        Ok(gw)
    }
}

/// Hands `dir` (recursively) to `uid:gid` and lets everyone traverse the
/// scratch directories above it, up to the system's temporary directory.
fn grant(dir: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    chown_tree(dir, uid, gid)?;
    let tmp = std::env::temp_dir();
    for ancestor in dir.ancestors().skip(1) {
        if !ancestor.starts_with(&tmp) || ancestor == tmp {
            break;
        }
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o111))?;
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A running `lifecycle-gateway` with SMTP, IMAP and HTTP listeners on
/// 127.0.0.1, killed when dropped.
///
/// ```no_run
/// use lifecycle_tests::{gateway_bin, GatewayProcess};
///
/// let gw = GatewayProcess::builder(gateway_bin()?).drain_grace("1s").start()?;
/// let metrics = gw.metrics()?;
/// assert!(metrics.contains("lifecycle_connections"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct GatewayProcess {
    child: ChildGuard,
    dir: tempfile::TempDir,
    /// The service user's copy of the binary (as root), kept while it runs.
    _installed: Option<Installed>,
    spool: PathBuf,
    log: LogFollower,
    /// The SMTP listener's address.
    pub smtp: SocketAddr,
    /// The IMAP listener's address.
    pub imap: SocketAddr,
    /// The HTTP listener's address.
    pub http: SocketAddr,
    /// Every listener's address, by name, as logged so far (see
    /// [`learn_addresses`](Self::learn_addresses)).
    addrs: Vec<(String, SocketAddr)>,
}

impl GatewayProcess {
    /// A builder for the executable at `bin` (see [`crate::gateway_bin`]).
    pub fn builder(bin: impl Into<PathBuf>) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.into(),
            drain_grace: "2s".to_owned(),
            lame_duck: "0s".to_owned(),
            smtp_address: "127.0.0.1:0".to_owned(),
            smtp_listener_extra: String::new(),
            http_address: "127.0.0.1:0".to_owned(),
            abort_grace: "1s".to_owned(),
            spool_dir: None,
            nofile: None,
            smtp_extra: String::new(),
            limits: None,
        }
    }

    /// Starts `command` (a gateway whose stderr is piped) in `dir` and
    /// follows its log, waiting for nothing; the listener addresses are
    /// unset until [`learn_addresses`](Self::learn_addresses). The spool
    /// is taken to be `spool` in `dir`.
    pub fn spawn_command(command: &mut Command, dir: tempfile::TempDir) -> io::Result<Self> {
        let mut child = ChildGuard::spawn_fresh(command)?;
        let stderr = child
            .child_mut()
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("the gateway's stderr was not piped"))?;
        Ok(GatewayProcess {
            child,
            spool: dir.path().join("spool"),
            dir,
            _installed: None,
            log: LogFollower::new(stderr),
            smtp: UNSET,
            imap: UNSET,
            http: UNSET,
            addrs: Vec::new(),
        })
    }

    /// Reads the listener addresses from the `listener bound` and
    /// `listener taken` lines logged so far.
    pub fn learn_addresses(&mut self) -> io::Result<()> {
        for line in self.logs() {
            if !line.contains(r#""msg":"listener bound""#)
                && !line.contains(r#""msg":"listener taken""#)
            {
                continue;
            }
            let addr = json_field(&line, "address")
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| io::Error::other(format!("no address in {line}")))?;
            let name = json_field(&line, "listener")
                .ok_or_else(|| io::Error::other(format!("no listener name in {line}")))?;
            match name.as_str() {
                "smtp" => self.smtp = addr,
                "imap" => self.imap = addr,
                "http" => self.http = addr,
                _ => {}
            }
            if !self.addrs.iter().any(|(n, _)| *n == name) {
                self.addrs.push((name, addr));
            }
        }
        Ok(())
    }

    /// The address of listener `name`, as logged (see
    /// [`learn_addresses`](Self::learn_addresses)).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/proc` figures of the process.
    pub fn stats(&self) -> ProcStats {
        ProcStats::new(self.pid())
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// The process's own temporary directory (config, default spool).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        self.child.signal(sig)
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        self.child.wait_timeout(timeout)
    }

    /// The exit status if it exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// The process's log (its stderr), followed as it grows.
    pub fn log(&self) -> &LogFollower {
        &self.log
    }

    /// Waits at most `timeout` until the process closed its log (it
    /// exited) and every line was read; false on timeout.
    pub fn wait_log_end(&self, timeout: Duration) -> bool {
        self.log.wait_end(timeout)
    }

    /// Waits at most `timeout` until `count` lines satisfy `pred`; returns
    /// the number that do (a log is written behind the events it tells).
    pub fn wait_log_count(
        &self,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        self.log.wait_count(count, timeout, pred)
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.lines()
    }

    /// The number of log lines so far.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// How many log lines so far satisfy `pred`.
    pub fn count_logs(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.log.count_since(0, pred)
    }

    /// How many log lines from index `from` on satisfy `pred`.
    pub fn count_logs_since(&self, from: usize, pred: impl Fn(&str) -> bool) -> usize {
        self.log.count_since(from, pred)
    }

    /// Every log line, joined (for failure messages; prefer
    /// [`log_tail`](Self::log_tail) for long logs).
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// The last `n` log lines, joined.
    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }

    /// Waits at most `timeout` for a log line matching `pred`; `None` at
    /// once when the log has ended without one.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.log.wait(timeout, pred)
    }

    /// The log line of shutdown phase `phase` (`draining`, `aborting`,
    /// `stopped`), waiting at most `timeout` for it.
    pub fn wait_phase(&self, phase: &str, timeout: Duration) -> Option<String> {
        let needle = format!(r#""phase":"{phase}""#);
        self.wait_log(timeout, |l| {
            l.contains(r#""msg":"phase""#) && l.contains(&needle)
        })
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> io::Result<String> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            return Err(io::Error::other(format!("/metrics answered {status}")));
        }
        Ok(body)
    }

    /// Status and body of `GET path` over HTTP/1.0.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        crate::http::http_get(self.http, path, Duration::from_secs(20))
    }
}

/// The command that starts the gateway `program` on the config file
/// `config`, in `dir`, with no stdin or stdout and stderr (its JSON log)
/// piped for [`GatewayProcess::spawn_command`].
pub fn gateway_command(program: &Path, config: &Path, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The string value of `"key":"value"` in a JSON log line.
///
/// ```
/// let line = r#"{"msg":"phase","phase":"stopped","left_open":0}"#;
/// assert_eq!(lifecycle_tests::json_field(line, "phase").as_deref(), Some("stopped"));
/// assert_eq!(lifecycle_tests::json_number(line, "left_open"), Some(0));
/// ```
pub fn json_field(line: &str, key: &str) -> Option<String> {
    let needle = format!(r#""{key}":""#);
    let start = line.find(&needle)? + needle.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// The integer value of `"key":N` in a JSON log line.
pub fn json_number(line: &str, key: &str) -> Option<i64> {
    let needle = format!(r#""{key}":"#);
    let start = line.find(&needle)? + needle.len();
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// Every sample of metric `name` in Prometheus text output, as
/// (label text, value).
///
/// ```
/// let text = "m{a=\"1\"} 2\nm{a=\"2\"} 3\nm_total 9\n";
/// let s = lifecycle_tests::metric_samples(text, "m");
/// assert_eq!(s, vec![("a=\"1\"".to_owned(), 2.0), ("a=\"2\"".to_owned(), 3.0)]);
/// ```
pub fn metric_samples(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                r.split_once('}')?
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of metric `name` whose labels include every `key="value"`
/// of `labels`; `None` when absent.
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_samples(metrics, name)
        .into_iter()
        .find(|(text, _)| {
            labels
                .iter()
                .all(|(k, v)| text.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
}
