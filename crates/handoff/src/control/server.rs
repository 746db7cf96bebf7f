//! The server side of the control socket for a synchronous `poll` loop
//! (the privileged parent's): non-blocking sockets, bounded request lines,
//! per-client deadlines, a client cap.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use nix::sys::socket::{send, MsgFlags};

use super::{
    error_reply, ControlCommand, ControlError, ControlSocket, CONTROL_IDLE_TIMEOUT,
    MAX_CONTROL_CLIENTS, MAX_REQUEST_LINE,
};

/// A connected client's state.
#[derive(Debug)]
enum ClientState {
    /// Reading its request line until the deadline.
    Reading { buf: Vec<u8>, deadline: Instant },
    /// Its request is being carried out (an upgrade with `wait`, a stop):
    /// it gets a reply later, or end of file when the process exits.
    Waiting,
}

#[derive(Debug)]
struct Client {
    id: u64,
    stream: UnixStream,
    state: ClientState,
}

/// A client, to reply to.
pub(crate) type ClientId = u64;

/// The server side of the control socket for a synchronous `poll` loop.
#[derive(Debug)]
pub(crate) struct ControlServer {
    socket: ControlSocket,
    clients: Vec<Client>,
    next_id: u64,
}

impl ControlServer {
    pub(crate) fn new(socket: ControlSocket) -> Self {
        ControlServer {
            socket,
            clients: Vec::new(),
            next_id: 1,
        }
    }

    /// The descriptors to poll for reading: the listener, then every
    /// client still sending its request.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.socket.listener.as_fd()];
        fds.extend(
            (self.clients.iter())
                .filter(|c| matches!(c.state, ClientState::Reading { .. }))
                .map(|c| c.stream.as_fd()),
        );
        fds
    }

    /// The earliest request deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        (self.clients.iter())
            .filter_map(|c| match c.state {
                ClientState::Reading { deadline, .. } => Some(deadline),
                ClientState::Waiting => None,
            })
            .min()
    }

    /// Handles the readable descriptors (indexes into [`fds`](Self::fds))
    /// and the expired deadlines; returns the complete requests. A client
    /// with a request waits for [`reply`](Self::reply) or
    /// [`hold`](Self::hold).
    pub(crate) fn service(&mut self, readable: &[usize]) -> Vec<(ClientId, ControlCommand)> {
        let reading: Vec<u64> = (self.clients.iter())
            .filter(|c| matches!(c.state, ClientState::Reading { .. }))
            .map(|c| c.id)
            .collect();
        let mut requests = Vec::new();
        for &index in readable {
            if index == 0 {
                continue;
            }
            if let Some(&id) = reading.get(index - 1) {
                if let Some(command) = self.read(id) {
                    requests.push((id, command));
                }
            }
        }
        if readable.contains(&0) {
            self.accept();
        }
        let now = Instant::now();
        let expired: Vec<u64> = (self.clients.iter())
            .filter(|c| matches!(c.state, ClientState::Reading { deadline, .. } if deadline <= now))
            .map(|c| c.id)
            .collect();
        for id in expired {
            self.fail(id, &ControlError::Timeout);
        }
        requests
    }

    fn accept(&mut self) {
        // A bounded number per round, so that a flood cannot keep the loop.
        for _ in 0..MAX_CONTROL_CLIENTS {
            let stream = match self.socket.listener.accept() {
                Ok((stream, _)) => stream,
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let refusal = if let Err(denied) = self.socket.access.check(&stream) {
                Some(denied)
            } else if self.clients.len() >= MAX_CONTROL_CLIENTS {
                Some(ControlError::Busy)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                let _ = write_line(&stream, &error_reply(&refusal.to_string()));
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.clients.push(Client {
                id,
                stream,
                state: ClientState::Reading {
                    buf: Vec::new(),
                    deadline: Instant::now() + CONTROL_IDLE_TIMEOUT,
                },
            });
        }
    }

    /// Reads what `id` sent; its command once a line is complete.
    fn read(&mut self, id: ClientId) -> Option<ControlCommand> {
        let index = self.clients.iter().position(|c| c.id == id)?;
        let client = &mut self.clients[index];
        let ClientState::Reading { buf, .. } = &mut client.state else {
            return None;
        };
        let mut chunk = [0u8; 4096];
        let outcome = loop {
            match client.stream.read(&mut chunk) {
                Ok(0) => break Err(None),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        break Ok(ControlCommand::parse_line(&buf[..end]));
                    }
                    if buf.len() >= MAX_REQUEST_LINE {
                        break Err(Some(ControlError::TooLong));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(None),
            }
        };
        match outcome {
            Ok(Ok(command)) => {
                client.state = ClientState::Waiting;
                Some(command)
            }
            Ok(Err(refused)) | Err(Some(refused)) => {
                self.fail(id, &refused);
                None
            }
            Err(None) => {
                self.clients.remove(index);
                None
            }
        }
    }

    fn fail(&mut self, id: ClientId, error: &ControlError) {
        self.reply(id, &error_reply(&error.to_string()));
    }

    /// Sends `reply` to `id` and closes the connection.
    pub(crate) fn reply(&mut self, id: ClientId, reply: &serde_json::Value) {
        if let Some(index) = self.clients.iter().position(|c| c.id == id) {
            let client = self.clients.remove(index);
            let _ = write_line(&client.stream, reply);
        }
    }

    /// Sends `reply` to `id` and keeps the connection open until the
    /// process exits (after `stop`).
    pub(crate) fn hold(&mut self, id: ClientId, reply: &serde_json::Value) {
        if let Some(client) = self.clients.iter().find(|c| c.id == id) {
            if write_line(&client.stream, reply).is_err() {
                self.clients.retain(|c| c.id != id);
            }
        }
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Takes `id` out of the server, request read, for a helper thread that
    /// replies to it (see `upgrade::relay`).
    pub(crate) fn detach(&mut self, id: ClientId) -> Option<UnixStream> {
        let index = self.clients.iter().position(|c| c.id == id)?;
        Some(self.clients.remove(index).stream)
    }
}

/// Writes `value` and a newline without blocking and without SIGPIPE; a
/// reply that does not fit at once is an error (the client does not read).
fn write_line(stream: &UnixStream, value: &serde_json::Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    let bytes = line.as_bytes();
    let mut sent = 0;
    while sent < bytes.len() {
        match send(stream.as_raw_fd(), &bytes[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(io::Error::from(errno)),
        }
    }
    Ok(())
}
