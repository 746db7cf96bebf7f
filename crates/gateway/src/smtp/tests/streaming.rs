//! A message streams to the spool's temporary file as it arrives (bounded
//! memory), limits are enforced while streaming, bare line endings never
//! reach the spool, and a message that is not acknowledged leaves nothing.

use super::*;
use crate::config::BareNewlines;

/// Bytes in the temporary files of the spool.
fn tmp_bytes(s: &Setup) -> u64 {
    fs::read_dir(s.spool_dir.join(TMP_DIR))
        .unwrap()
        .map(|e| e.unwrap().metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Waits (polling, at most 20 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn start_data<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) {
    hello(c).await;
    next_data(c).await;
}

async fn next_data<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) {
    c.start_data().await;
}

#[tokio::test]
async fn a_message_streams_to_its_temporary_file_and_a_hang_up_removes_it() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    start_data(&mut c).await;
    let line = format!("{}\r\n", "s".repeat(98));
    c.send(&line.repeat(3000)).await; // 300 KB, no final dot
                                      // The session holds a fixed buffer: most of the message is on disk
                                      // before it is complete.
    until("the message is in its temporary file", || {
        tmp_bytes(&s) >= 200_000
    })
    .await;
    println!("mid-transfer: {} bytes in tmp/", tmp_bytes(&s));
    assert!(s.messages().is_empty());
    drop(c);
    assert_eq!(task.await.unwrap().reason, EndReason::ClientClosed);
    assert_eq!(s.tmp_files(), 0, "the temporary file is removed");
    assert!(s.messages().is_empty());
}

#[tokio::test]
async fn a_message_over_the_limit_is_dropped_while_streaming_and_gets_552() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().max_message_size(200_000));
    start_data(&mut c).await;
    let line = format!("{}\r\n", "o".repeat(98));
    c.send(&line.repeat(1500)).await; // 150 KB: under the limit
    until("the message is in its temporary file", || {
        tmp_bytes(&s) >= 100_000
    })
    .await;
    c.send(&line.repeat(1000)).await; // 250 KB: over
    until("the temporary file is removed", || s.tmp_files() == 0).await;
    c.send(&line.repeat(1000)).await; // read and discarded
    c.send(".\r\n").await;
    c.expect("552 5.3.4 message exceeds the limit of 200000 octets")
        .await;
    assert!(s.messages().is_empty());
    assert_eq!(s.tmp_files(), 0);
    c.quit().await;
    task.await.unwrap();
}

#[tokio::test]
async fn a_large_message_is_stored_byte_for_byte() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    start_data(&mut c).await;
    // 4 MiB of lines of every length from 0 to 998 octets, in odd writes.
    let mut body = Vec::new();
    let mut n = 0usize;
    while body.len() < 4 << 20 {
        let len = (n * 7919) % 999;
        body.extend((0..len).map(|i| b'A' + ((i + n) % 60) as u8));
        body.extend_from_slice(b"\r\n");
        n += 1;
    }
    for piece in body.chunks(12_345) {
        c.send_bytes(piece).await;
    }
    c.send(".\r\n").await;
    c.expect("250 2.0.0").await;
    c.quit().await;
    task.await.unwrap();
    let msgs = s.messages();
    assert_eq!(msgs.len(), 1);
    // No line starts with "." (bytes 'A'..='|'), so nothing is unstuffed.
    assert!(body_of(&msgs[0]) == body.as_slice(), "stored byte for byte");
}

#[tokio::test]
async fn bare_line_endings_are_stored_as_crlf_by_default() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    start_data(&mut c).await;
    // The smuggling pattern: a bare-LF "end of data" inside the message.
    c.send("foo\n.\nbar\r\nbare\rcr\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    c.quit().await;
    task.await.unwrap();
    let msgs = s.messages();
    assert_eq!(body_of(&msgs[0]), b"foo\r\n.\r\nbar\r\nbare\r\ncr\r\n");
    for m in &msgs {
        for (i, &b) in m.iter().enumerate() {
            let bare = match b {
                b'\r' => m.get(i + 1) != Some(&b'\n'),
                b'\n' => i == 0 || m[i - 1] != b'\r',
                _ => false,
            };
            assert!(!bare, "bare CR or LF at {i} in {m:?}");
        }
    }
}

#[tokio::test]
async fn bare_line_endings_can_reject_the_message_with_550() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx().bare_newlines(BareNewlines::Reject));
    hello(&mut c).await;
    for body in ["foo\n.\nbar\r\n.\r\n", "a\rb\r\n.\r\n"] {
        next_data(&mut c).await;
        c.send(body).await;
        c.expect("550 5.5.2 message contains a bare CR or LF").await;
    }
    // A clean message in the same session is accepted.
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nclean\r\n.\r\n")
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.expect("250 2.0.0").await;
    c.quit().await;
    assert_eq!(task.await.unwrap().messages, 1);
    assert_eq!(s.messages().len(), 1);
    assert_eq!(s.tmp_files(), 0);
}
