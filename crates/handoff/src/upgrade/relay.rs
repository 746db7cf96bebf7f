//! `status` and `connections` with what only the children know: the
//! privileged parent asks each child's own control endpoint (a Unix socket
//! the parent binds for it and passes as [`CHILD_CONTROL_NAME`]) from a
//! helper thread, which then answers the client itself. The supervision
//! loop hands the client over and goes on; it never waits for a child.
//!
//! Bounds: at most [`MAX_CONTROL_CLIENTS`] relays at once (more get the
//! parent's own answer), a non-blocking connect (a child whose backlog is
//! full is skipped), [`RELAY_TIMEOUT`] for each child's reply and for the
//! client's write.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use serde_json::{json, Value};

use crate::control::{ControlCommand, MAX_CONTROL_CLIENTS, MAX_REQUEST_LINE};

/// The hand-off name of a child's own control endpoint.
pub const CHILD_CONTROL_NAME: &str = "lifecycle-child-control";

/// How long a child may take to answer, and a client to take the reply.
pub(super) const RELAY_TIMEOUT: Duration = Duration::from_secs(1);

/// A child's control endpoint: its path, removed when the generation is
/// gone.
#[derive(Debug)]
pub(super) struct Endpoint {
    pub(super) path: PathBuf,
}

impl Endpoint {
    /// The endpoint of generation `number` beside the control socket at
    /// `control` (`<control>.<number>`).
    pub(super) fn path_for(control: &Path, number: u64) -> PathBuf {
        let mut name = control.as_os_str().to_owned();
        name.push(format!(".{number}"));
        PathBuf::from(name)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Best effort: a missing path is fine.
        let _ = fs::remove_file(&self.path);
    }
}

/// Which children to ask: the serving one and the draining ones, by
/// generation.
#[derive(Debug, Clone, Default)]
pub(super) struct Children {
    pub(super) serving: Option<(u64, PathBuf)>,
    pub(super) draining: Vec<(u64, PathBuf)>,
}

/// Relays in flight, shared by the loop and its helper threads.
#[derive(Debug, Clone, Default)]
pub(super) struct Relays(Arc<AtomicUsize>);

impl Relays {
    /// Whether another relay may start (fewer than
    /// [`MAX_CONTROL_CLIENTS`] run).
    pub(super) fn available(&self) -> bool {
        self.0.load(Ordering::SeqCst) < MAX_CONTROL_CLIENTS
    }

    /// Starts a thread that completes `reply` (the parent's own answer to
    /// `command`) with the children's and writes it to `client` (which
    /// sees its connection close if no thread can be started).
    pub(super) fn start(
        &self,
        client: UnixStream,
        command: ControlCommand,
        reply: Value,
        children: Children,
    ) {
        self.0.fetch_add(1, Ordering::SeqCst);
        let count = Arc::clone(&self.0);
        let spawned = std::thread::Builder::new()
            .name("control-relay".to_owned())
            .spawn(move || {
                let reply = complete(command, reply, &children);
                let _ = answer(client, &reply);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The parent's `reply` with the children's answers merged in.
fn complete(command: ControlCommand, mut reply: Value, children: &Children) -> Value {
    let all = children.serving.iter().chain(&children.draining);
    match command {
        ControlCommand::Connections => {
            let mut connections = Vec::new();
            let mut errors = Vec::new();
            for (generation, path) in all {
                match ask(path, command, RELAY_TIMEOUT) {
                    Ok(child) => connections
                        .extend((child["connections"].as_array().cloned()).unwrap_or_default()),
                    Err(e) => errors.push(format!("generation {generation}: {e}")),
                }
            }
            reply["live"] = json!(connections.len());
            reply["connections"] = Value::Array(connections);
            if !errors.is_empty() {
                reply["incomplete"] = json!(errors);
            }
        }
        _ => {
            if let Some((generation, path)) = &children.serving {
                match ask(path, ControlCommand::Status, RELAY_TIMEOUT) {
                    Ok(child) => {
                        reply["listeners"] = child["listeners"].clone();
                        reply["serving"]["live"] = child["serving"]["live"].clone();
                    }
                    Err(e) => {
                        reply["incomplete"] = json!([format!("generation {generation}: {e}")])
                    }
                }
            }
            for (generation, path) in &children.draining {
                let live = ask(path, ControlCommand::Status, RELAY_TIMEOUT)
                    .map_or(Value::Null, |child| child["serving"]["live"].clone());
                if let Some(entries) = reply["draining"].as_array_mut() {
                    for entry in entries
                        .iter_mut()
                        .filter(|d| d["generation"] == *generation)
                    {
                        entry["live"] = live.clone();
                    }
                }
            }
        }
    }
    reply
}

/// One request to a child's endpoint; its reply. Each of the write and
/// the read may take `timeout`.
pub(super) fn ask(
    path: &Path,
    command: ControlCommand,
    timeout: Duration,
) -> std::io::Result<Value> {
    let mut stream = connect_now(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(command.to_line().as_bytes())?;
    let mut line = String::new();
    let limit = u64::try_from(MAX_REQUEST_LINE * 16).unwrap_or(u64::MAX);
    BufReader::new(stream.take(limit)).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    if reply["ok"] == Value::Bool(true) {
        Ok(reply)
    } else {
        Err(std::io::Error::other(
            reply["error"].as_str().unwrap_or("refused").to_owned(),
        ))
    }
}

/// Connects without waiting: a full backlog is an error, not a wait.
fn connect_now(path: &Path) -> std::io::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let address = UnixAddr::new(path)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Writes the reply line to the client, within [`RELAY_TIMEOUT`].
fn answer(mut client: UnixStream, reply: &Value) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_write_timeout(Some(RELAY_TIMEOUT))?;
    let mut line = reply.to_string();
    line.push('\n');
    client.write_all(line.as_bytes())
}
