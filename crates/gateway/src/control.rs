//! The control socket served by the serving process itself, when no
//! privileged parent owns upgrades (socket-activated or
//! `CAP_NET_BIND_SERVICE`/immediate setups): the same protocol and bounds
//! as the parent's (`lifecycle_handoff::ControlCommand`; a request line of
//! at most `MAX_REQUEST_LINE` bytes within `CONTROL_IDLE_TIMEOUT`, at most
//! `MAX_CONTROL_CLIENTS` at once, `SO_PEERCRED` access), served by tasks of
//! the runtime, so that no client can hold up anything else.
//!
//! `upgrade` goes to the hand-over task ([`UpgradeDesk`]); the socket
//! itself is handed on to the successor at a hand-over (an entry named
//! `CONTROL_LISTENER_NAME`), which serves the same socket: the path is
//! never unlinked nor re-bound, and a client that connects during the
//! hand-over is answered by one of the two processes. Once the successor
//! serves, this process stops accepting on it.

mod replies;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifecycle_handoff::{
    error_reply, ControlAccess, ControlCommand, ControlError, ControlSocket, Handoff,
    ListenAddress, ListenerSpec, PassedListener, CHILD_CONTROL_NAME, CONTROL_IDLE_TIMEOUT,
    CONTROL_LISTENER_NAME, MAX_CONTROL_CLIENTS, MAX_REQUEST_LINE,
};
use serde_json::Value;
use slog::{debug, info, warn, Logger};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::config::Config;

pub(crate) use replies::{ControlContext, UpgradeDesk, UpgradeRequest};

/// The control socket of a serving process without a privileged parent:
/// the one its predecessor handed on (same path; taken, not re-bound), else
/// bound afresh at the configured `control_socket` (none without it).
/// Logged either way.
pub(crate) fn serving_socket(
    config: &Config,
    handoff: &mut Handoff,
    log: &Logger,
) -> Result<Option<ControlSocket>, lifecycle_handoff::Error> {
    let Some(path) = config.control_socket() else {
        return Ok(None);
    };
    let passed =
        (handoff.inventory().listeners.iter()).any(|l| l.spec.name() == CONTROL_LISTENER_NAME);
    if passed {
        match handoff.listen(&ListenerSpec::unix(CONTROL_LISTENER_NAME, path)) {
            Ok(fd) => {
                let access = control_access(config, path)?;
                let listener = std::os::unix::net::UnixListener::from(fd);
                let mut socket = ControlSocket::from_listener(listener, path, access)?;
                // Left in place at exit: the socket is shared with the
                // predecessor until it drained, and a later start replaces
                // a stale one (systemd removes RuntimeDirectory= at a stop).
                socket.keep_path();
                info!(log, "control socket taken over from the predecessor"; "path" => %path.display());
                return Ok(Some(socket));
            }
            Err(e) => {
                warn!(log, "the predecessor's control socket is not the configured one; binding it afresh";
                    "path" => %path.display(), "error" => %e);
            }
        }
    }
    let socket = bind_socket(config)?;
    info!(log, "control socket listening"; "path" => %path.display(),
        "group" => config.control_group().unwrap_or("(root and the service user only)"));
    Ok(socket)
}

/// Binds the configured control socket (none without `control_socket`),
/// with access for root, the service's own user and the members of
/// `control_group`.
pub(crate) fn bind_socket(
    config: &Config,
) -> Result<Option<ControlSocket>, lifecycle_handoff::Error> {
    let Some(path) = config.control_socket() else {
        return Ok(None);
    };
    ControlSocket::bind(path, control_access(config, path)?).map(Some)
}

/// Who may use the control socket at `path`: root, the service's own user,
/// and the members of `control_group`.
fn control_access(config: &Config, path: &Path) -> Result<ControlAccess, lifecycle_handoff::Error> {
    let Some(name) = config.control_group() else {
        return Ok(ControlAccess::owner_only());
    };
    let group = nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| lifecycle_handoff::Error::Control {
            path: path.to_path_buf(),
            action: "resolve control_group (no such group; create it or fix the name)",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
    let members = (group.mem.iter())
        .filter_map(|user| nix::unistd::User::from_name(user).ok().flatten())
        .map(|user| user.uid.as_raw())
        .collect();
    Ok(ControlAccess::group(group.gid.as_raw(), members))
}

/// A child of the privileged parent: the control endpoint the parent
/// bound for it (`CHILD_CONTROL_NAME`), on which the parent asks for what
/// only the serving process knows (listener counts, connections); `None`
/// when none was passed (logged when it cannot be taken).
pub(crate) fn child_endpoint(handoff: &mut Handoff, log: &Logger) -> Option<ControlSocket> {
    let spec = (handoff.inventory().listeners.iter())
        .find(|l| l.spec.name() == CHILD_CONTROL_NAME)
        .map(|l| l.spec.clone())?;
    let ListenAddress::Unix(path) = spec.address().clone() else {
        return None;
    };
    let taken = handoff.listen(&spec).and_then(|fd| {
        let listener = std::os::unix::net::UnixListener::from(fd);
        ControlSocket::from_listener(listener, &path, ControlAccess::owner_only())
    });
    match taken {
        Ok(mut socket) => {
            // The parent removes it when this generation is gone.
            socket.keep_path();
            Some(socket)
        }
        Err(e) => {
            warn!(log, "cannot serve the parent's control endpoint; ctl status will lack this process's counts"; "error" => %e);
            None
        }
    }
}

/// A duplicate of `socket` to hand on to a successor.
pub(crate) fn passed_on(socket: &ControlSocket) -> std::io::Result<PassedListener> {
    Ok(PassedListener {
        spec: ListenerSpec::unix(CONTROL_LISTENER_NAME, socket.path()),
        fd: socket.listener().try_clone()?.into(),
    })
}

/// How long a reply may take to be written before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop pauses after an accept error (EMFILE), so that
/// it cannot spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `socket` until the hand-over to a successor succeeded (then the
/// path is left to the successor) or the runtime ends. Call it inside the
/// actix system.
pub(crate) fn serve_control(socket: ControlSocket, ctx: ControlContext) {
    let listener = socket
        .listener()
        .try_clone()
        .and_then(UnixListener::from_std);
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            warn!(ctx.log, "cannot serve the control socket"; "path" => %socket.path().display(), "error" => %e);
            return;
        }
    };
    let ctx = Arc::new(ctx);
    actix::spawn(async move {
        let mut socket = socket;
        let clients = Arc::new(Semaphore::new(MAX_CONTROL_CLIENTS));
        let handed_over = ctx.desk.handed_over();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = handed_over.cancelled() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(ctx.log, "control socket: accept failed"; "error" => %e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let refusal = match (
                socket.access().check(&stream),
                clients.clone().try_acquire_owned(),
            ) {
                (Err(denied), _) => Err(denied),
                (Ok(()), Err(_)) => Err(ControlError::Busy),
                (Ok(()), Ok(permit)) => Ok(permit),
            };
            let ctx = Arc::clone(&ctx);
            actix::spawn(async move {
                match refusal {
                    Ok(_permit) => serve_client(stream, &ctx).await,
                    Err(refused) => {
                        let _ = write_reply(&stream, &error_reply(&refused.to_string())).await;
                    }
                }
            });
        }
        // The successor serves the same socket from now on.
        socket.keep_path();
        debug!(ctx.log, "control socket left to the successor"; "path" => %socket.path().display());
    });
}

/// One client: its request line (bounded in size and time), then the reply.
async fn serve_client(mut stream: UnixStream, ctx: &ControlContext) {
    let command = match tokio::time::timeout(CONTROL_IDLE_TIMEOUT, read_request(&mut stream)).await
    {
        Ok(Ok(command)) => command,
        Ok(Err(Some(refused))) => {
            let _ = write_reply(&stream, &error_reply(&refused.to_string())).await;
            return;
        }
        Ok(Err(None)) => return,
        Err(_) => {
            let _ = write_reply(&stream, &error_reply(&ControlError::Timeout.to_string())).await;
            return;
        }
    };
    let reply = ctx.answer(command).await;
    if write_reply(&stream, &reply).await.is_err() {
        return;
    }
    if command == ControlCommand::Stop && reply["ok"] == Value::Bool(true) {
        // The connection stays open until the process exits: its end of
        // file tells the client that the service stopped.
        std::future::pending::<()>().await;
    }
}

/// Reads up to the first newline; `Err(None)` when the client went away.
async fn read_request(stream: &mut UnixStream) -> Result<ControlCommand, Option<ControlError>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            return ControlCommand::parse_line(&buf[..end]).map_err(Some);
        }
        if buf.len() >= MAX_REQUEST_LINE {
            return Err(Some(ControlError::TooLong));
        }
    }
}

/// Writes `value` and a newline, within [`WRITE_TIMEOUT`].
async fn write_reply(stream: &UnixStream, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    let write = async {
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
    }
}
