//! `lifecycle-gateway ctl`: the operator's client for the control socket
//! (one JSON request line, one JSON reply line; see
//! `lifecycle_handoff::ControlCommand`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use lifecycle_handoff::{ControlCommand, MAX_REQUEST_LINE};
use serde_json::Value;

use crate::config::Config;
use crate::exit::{EXIT_CONFIG, EXIT_CTL_FAILED, EXIT_CTL_UNREACHABLE};

/// Where the packaged units put the control socket; `ctl` uses it when
/// neither `--socket` nor a configuration names one.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lifecycle-gateway/control.sock";

/// `lifecycle-gateway ctl [--config FILE | --socket PATH] [--json] COMMAND`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The service's configuration file; its `control_socket` is used.
    #[arg(long = "config", value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The control socket's path (default: the configuration's
    /// `control_socket`, else /run/lifecycle-gateway/control.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the service's JSON reply instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// A `ctl` command.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlAction {
    /// Mode, pids, generation, phase, draining generations, upgrade counts
    /// and the last upgrade's result.
    Status,
    /// Start an upgrade (the binary on disk). With --wait: exit 0 once the
    /// new generation serves and the old one drains, non-zero with the
    /// reason otherwise; concurrent callers share one upgrade.
    Upgrade {
        /// Wait for the upgrade's result.
        #[arg(long)]
        wait: bool,
        /// How long to wait for the answer.
        #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Stop gracefully (as SIGTERM); returns once the service stopped.
    Stop {
        /// Return as soon as the stop began.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the stop.
        #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The open connections (peer, protocol, listener, age, generation).
    Connections,
}

/// Why `ctl` failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No socket path could be found.
    #[error("no control socket: pass --socket PATH, or --config FILE with `control_socket` set")]
    NoSocket,
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Connecting, writing or reading failed.
    #[error("control socket {path:?}: cannot {action}: {source} (is the service running, with control_socket set, and are you root or in control_group?)")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reply was not JSON.
    #[error("control socket {path:?}: bad reply ({detail})")]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The service said no.
    #[error("{0}")]
    Refused(String),
}

impl CtlError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => EXIT_CTL_FAILED,
            CtlError::Config(_) | CtlError::NoSocket => EXIT_CONFIG,
            CtlError::Io { .. } | CtlError::BadReply { .. } => EXIT_CTL_UNREACHABLE,
        }
    }
}

impl CtlArgs {
    /// The socket to talk to: `--socket`, the configuration's (`--config`
    /// here or before `ctl`), or [`DEFAULT_CONTROL_SOCKET`].
    pub fn socket_path(&self, outer_config: Option<&Path>) -> Result<PathBuf, CtlError> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(file) = self.config.as_deref().or(outer_config) {
            let config = Config::from_file(file)?;
            return config
                .control_socket()
                .map(Path::to_path_buf)
                .ok_or(CtlError::NoSocket);
        }
        Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }

    /// Runs the command; the text to print on success.
    pub fn run(&self, outer_config: Option<&Path>) -> Result<String, CtlError> {
        let path = self.socket_path(outer_config)?;
        let (command, timeout, wait_eof) = match self.action {
            CtlAction::Status => (ControlCommand::Status, Duration::from_secs(10), false),
            CtlAction::Upgrade { wait, timeout } => {
                (ControlCommand::Upgrade { wait }, timeout, false)
            }
            CtlAction::Stop { no_wait, timeout } => (ControlCommand::Stop, timeout, !no_wait),
            CtlAction::Connections => (ControlCommand::Connections, Duration::from_secs(10), false),
        };
        let (line, reply) = request(&path, command, timeout, wait_eof)?;
        if reply["ok"] != Value::Bool(true) {
            let error = reply["error"]
                .as_str()
                .unwrap_or("the service refused the request");
            return Err(CtlError::Refused(if self.json {
                line
            } else {
                error.to_owned()
            }));
        }
        if self.json {
            return Ok(line);
        }
        Ok(match self.action {
            CtlAction::Status => status_table(&reply),
            CtlAction::Upgrade { .. } => upgrade_text(&reply),
            CtlAction::Stop { no_wait, .. } => {
                if no_wait {
                    format!("stopping (pid {})", reply["pid"])
                } else {
                    format!("stopped (pid {})", reply["pid"])
                }
            }
            CtlAction::Connections => connections_table(&reply),
        })
    }
}

/// Sends `command` to the socket at `path`; the reply line and its JSON.
/// With `wait_eof`, then waits until the service closes the connection
/// (it exited). At most `timeout` for each step.
pub fn request(
    path: &Path,
    command: ControlCommand,
    timeout: Duration,
    wait_eof: bool,
) -> Result<(String, Value), CtlError> {
    let io = |action| {
        move |source| CtlError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let mut stream = UnixStream::connect(path).map_err(io("connect to"))?;
    stream
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(io("set a timeout on"))?;
    // A refused peer gets its reply and a close before it writes: the
    // write may fail with EPIPE while the reply waits to be read.
    let sent = stream.write_all(command.to_line().as_bytes());
    let mut reader = BufReader::new(stream.try_clone().map_err(io("read from"))?)
        .take(u64::try_from(MAX_REQUEST_LINE * 16).unwrap_or(u64::MAX));
    let mut line = String::new();
    let read = reader.read_line(&mut line);
    if line.is_empty() {
        sent.map_err(io("send the request to"))?;
    }
    read.map_err(io("read the reply from"))?;
    if line.is_empty() {
        return Err(CtlError::BadReply {
            path: path.to_path_buf(),
            detail: "the service closed the connection without answering (did it stop?)".to_owned(),
        });
    }
    let reply: Value = serde_json::from_str(&line).map_err(|e| CtlError::BadReply {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if wait_eof && reply["ok"] == Value::Bool(true) {
        let mut rest = Vec::new();
        reader
            .read_to_end(&mut rest)
            .map_err(io("wait for the stop on"))?;
    }
    Ok((line.trim_end().to_owned(), reply))
}

fn time(value: &Value) -> String {
    match value.as_u64() {
        Some(secs) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }
        None => "-".to_owned(),
    }
}

fn age(value: &Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match value.as_u64() {
        Some(secs) => format!("{}s ago", now.saturating_sub(secs)),
        None => "-".to_owned(),
    }
}

fn generation_pid(value: &Value) -> String {
    if value.is_null() {
        return "-".to_owned();
    }
    format!("{} (pid {})", value["generation"], value["pid"])
}

/// The `status` reply as a table.
pub fn status_table(reply: &Value) -> String {
    let mut rows = vec![
        ("mode", reply["mode"].as_str().unwrap_or("-").to_owned()),
        ("pid", reply["pid"].to_string()),
        ("phase", reply["phase"].as_str().unwrap_or("-").to_owned()),
        ("serving", generation_pid(&reply["serving"])),
    ];
    if !reply["candidate"].is_null() {
        rows.push(("starting", generation_pid(&reply["candidate"])));
    }
    for listener in reply["listeners"].as_array().into_iter().flatten() {
        rows.push((
            "listener",
            format!(
                "{}: live {}, refused {}",
                listener["name"].as_str().unwrap_or("?"),
                listener["live"],
                listener["refused"]
            ),
        ));
    }
    for draining in reply["draining"].as_array().into_iter().flatten() {
        let live = if draining["live"].is_null() {
            String::new()
        } else {
            format!(", live {}", draining["live"])
        };
        rows.push((
            "draining",
            format!(
                "{}{live}, since {}, deadline {}",
                generation_pid(draining),
                age(&draining["since"]),
                time(&draining["deadline"])
            ),
        ));
    }
    rows.push((
        "upgrades",
        format!(
            "ok {}, failed {}",
            reply["upgrades"]["ok"], reply["upgrades"]["failed"]
        ),
    ));
    let last = &reply["last_upgrade"];
    let last = if last.is_null() {
        "none".to_owned()
    } else if last["ok"] == Value::Bool(true) {
        format!(
            "ok: {} -> {} at {}",
            last["from"],
            last["to"],
            time(&last["at"])
        )
    } else {
        format!(
            "failed: {} -> {} at {}: {}",
            last["from"],
            last["to"],
            time(&last["at"]),
            last["reason"].as_str().unwrap_or("-")
        )
    };
    rows.push(("last upgrade", last));
    rows.iter()
        .map(|(k, v)| format!("{k:<13}{v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn upgrade_text(reply: &Value) -> String {
    if reply["started"] == Value::Bool(true) {
        return format!(
            "upgrade started: generation {} (pid {}) is starting",
            reply["to"], reply["pid"]
        );
    }
    format!(
        "upgrade ok: generation {} (pid {}) serves; generation {} drains",
        reply["to"], reply["pid"], reply["from"]
    )
}

fn connections_table(reply: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<6} {:<10} {:>8} {:>4}",
        "PEER", "PROTO", "LISTENER", "AGE", "GEN"
    );
    for c in reply["connections"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n{:<24} {:<6} {:<10} {:>7}s {:>4}",
            c["peer"].as_str().unwrap_or("-"),
            c["protocol"].as_str().unwrap_or("-"),
            c["listener"].as_str().unwrap_or("-"),
            c["age_secs"],
            c["generation"]
        ));
    }
    out
}
