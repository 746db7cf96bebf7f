//! A small blocking SMTP client for the tests that run their clients in
//! this process (a handful of sockets each).

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sender and recipient of every test message.
pub(crate) const FROM: &str = "sender@test";
pub(crate) const TO: &str = "rcpt@test";

pub(crate) struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects and reads the greeting (which must be 220).
    pub(crate) fn connect(addr: SocketAddr) -> io::Result<Smtp> {
        let mut c = Smtp::connect_raw(addr)?;
        let greeting = c.reply()?;
        if !greeting.starts_with("220 ") {
            return Err(io::Error::other(format!("greeting {greeting:?}")));
        }
        Ok(c)
    }

    /// Connects without reading anything.
    pub(crate) fn connect_raw(addr: SocketAddr) -> io::Result<Smtp> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Smtp {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// A second handle on the connection, to write from another thread.
    pub(crate) fn writer_clone(&self) -> io::Result<TcpStream> {
        self.writer.try_clone()
    }

    /// Closes the write side (the server sees end of input).
    pub(crate) fn half_close(&self) -> io::Result<()> {
        self.writer.shutdown(std::net::Shutdown::Write)
    }

    /// One line, lossily decoded; end of input is `UnexpectedEof`.
    pub(crate) fn line(&mut self) -> io::Result<String> {
        let mut l = Vec::new();
        if self.reader.read_until(b'\n', &mut l)? == 0 {
            return Err(io::Error::from(ErrorKind::UnexpectedEof));
        }
        Ok(String::from_utf8_lossy(&l).into_owned())
    }

    /// One whole reply (continuation lines joined).
    pub(crate) fn reply(&mut self) -> io::Result<String> {
        lifecycle_tests::read_reply(&mut self.reader)
    }

    /// Sends `command` (CRLF added) and returns the reply.
    pub(crate) fn command(&mut self, command: &str) -> io::Result<String> {
        self.send(format!("{command}\r\n").as_bytes())?;
        self.reply()
    }

    /// EHLO, MAIL, RCPT, DATA up to the 354.
    pub(crate) fn begin_data(&mut self) -> io::Result<()> {
        for (command, code) in [
            ("EHLO client.test".to_owned(), "250"),
            (format!("MAIL FROM:<{FROM}>"), "250 "),
            (format!("RCPT TO:<{TO}>"), "250 "),
            ("DATA".to_owned(), "354 "),
        ] {
            let reply = self.command(&command)?;
            if !reply.starts_with(code) {
                return Err(io::Error::other(format!("{command}: {reply:?}")));
            }
        }
        Ok(())
    }

    /// A whole transaction: the body (which must end in CRLF and have no
    /// line starting with a dot), the final dot, and the reply to it.
    pub(crate) fn deliver(&mut self, body: &[u8]) -> io::Result<String> {
        self.begin_data()?;
        self.send(body)?;
        self.send(b".\r\n")?;
        self.reply()
    }
}

/// A spooled message without its `Received:` trace line (it carries the
/// time of arrival; [`spooled`] leaves it out so that files compare).
pub(crate) fn without_trace(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len());
    let mut in_trace = false;
    let mut rest = stored;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..=i];
        if line == b"\r\n" {
            break;
        }
        in_trace = line.starts_with(b"Received: ") || (in_trace && line.starts_with(b"\t"));
        if !in_trace {
            out.extend_from_slice(line);
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out
}

/// What the spool file of a message with `body` holds (without its
/// `Received:` line, see [`without_trace`]).
pub(crate) fn spooled(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Return-Path: <{FROM}>\r\nDelivered-To: {TO}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// The id in `250 2.0.0 ok: queued as ID`.
pub(crate) fn queued_id(reply: &str) -> Option<String> {
    let rest = reply.strip_prefix("250 ")?;
    Some(rest.split("queued as ").nth(1)?.trim().to_owned())
}

/// A message body of about `size` bytes, unique for `tag`: a subject line
/// and lines of 76 characters, none starting with a dot, ending in CRLF.
pub(crate) fn body(tag: &str, size: usize) -> Vec<u8> {
    let mut out = format!("Subject: {tag}\r\n\r\n").into_bytes();
    let mut n = 0u64;
    while out.len() < size {
        n += 1;
        let line = format!("{tag} line {n:08} ");
        let mut line = line.into_bytes();
        while line.len() < 76 {
            line.push(b'a' + (n % 26) as u8);
        }
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Complete message files (`*.eml`) in `dir`, by id.
pub(crate) fn spool_files(dir: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("read the spool")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
        .collect();
    out.sort();
    out
}

/// Files in the spool's `tmp/`.
pub(crate) fn tmp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count())
}
