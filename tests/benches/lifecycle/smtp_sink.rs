//! The SMTP baseline: a tiny sink that spools each message the way the
//! gateway does (one file per message, written under a temporary name,
//! then renamed) but never calls fsync.

use crate::accept::{serve_tokio, Running};
use crate::Res;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Starts the sink on a current-thread runtime, spooling into `spool`.
pub(crate) fn start(spool: PathBuf) -> Res<Running> {
    let next_id = Arc::new(AtomicU64::new(0));
    serve_tokio("smtp-sink", move |stream| {
        let spool = spool.clone();
        let next_id = Arc::clone(&next_id);
        async move {
            if let Err(e) = session(stream, &spool, &next_id).await {
                eprintln!("smtp sink: session failed: {e}");
            }
        }
    })
}

async fn session(stream: TcpStream, spool: &std::path::Path, next_id: &AtomicU64) -> Res<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    write.write_all(b"220 sink ESMTP ready\r\n").await?;
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match verb.as_slice() {
            b"EHLO" | b"HELO" => {
                write
                    .write_all(
                        b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 33554432\r\n",
                    )
                    .await?
            }
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => write.write_all(b"250 2.0.0 OK\r\n").await?,
            b"DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut message = Vec::with_capacity(16 * 1024);
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await? == 0 {
                        return Err("client closed during DATA".into());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
                    message.extend_from_slice(unstuffed);
                }
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let tmp = spool.join(format!(".tmp-{id}"));
                let done = spool.join(format!("{id}.eml"));
                std::fs::write(&tmp, &message)?;
                std::fs::rename(&tmp, &done)?;
                write.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            b"QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"500 5.5.2 what?\r\n").await?,
        }
    }
}
