//! Spool failures: a broken spool and a full disk answer 452, never 250.

use super::*;

#[tokio::test]
async fn a_spool_that_cannot_write_answers_452_never_250() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    fs::remove_dir(s.spool_dir.join(TMP_DIR)).unwrap();
    c.start_data().await;
    c.send("lost?\r\n.\r\n").await;
    c.expect("452 4.3.1").await;
    c.quit().await;
    assert_eq!(task.await.unwrap().messages, 0);
    assert!(s.messages().is_empty());
}

/// Unmounts the tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| Mount(at.to_owned()))
}

#[tokio::test]
async fn a_full_disk_answers_452_never_250() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(dir.path(), "64k") else {
        println!("SKIP: cannot mount a tmpfs here (not root, or no permission); full-disk case not tested");
        return;
    };
    let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
    let phases = PhaseController::new();
    let ctx = SmtpContext::new(spool.clone(), log()).hostname("test.example");
    let (client, server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(serve_smtp(
        server,
        "t".into(),
        phases.handle(),
        Arc::new(ctx),
    ));
    let mut c = Client {
        io: BufReader::new(client),
    };
    hello(&mut c).await;
    let line = format!("{}\r\n", "f".repeat(98));
    let mut replies = Vec::new();
    for _ in 0..3 {
        c.start_data().await;
        c.send(&line.repeat(400)).await; // 40 KB each: the second cannot fit
        c.send(".\r\n").await;
        replies.push(c.reply().await);
    }
    c.quit().await;
    let summary = task.await.unwrap();
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(
        replies[1].starts_with("452 4.3.1 insufficient system storage"),
        "{replies:?}"
    );
    let accepted = replies.iter().filter(|r| r.starts_with("250")).count();
    assert_eq!(spool.messages().unwrap().len(), accepted);
    assert_eq!(summary.messages as usize, accepted);
    assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
}

#[tokio::test]
async fn a_failed_directory_fsync_answers_452_and_leaves_no_copy() {
    let s = Setup::new();
    let (mut c, task) = s.start(s.ctx());
    hello(&mut c).await;
    s.spool
        .fail_dir_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    c.start_data().await;
    c.send("first try\r\n.\r\n").await;
    c.expect("452 4.3.1").await;
    assert!(s.messages().is_empty(), "the unacknowledged copy is gone");
    assert_eq!(s.tmp_files(), 0);
    // The client retries: exactly one copy.
    s.spool
        .fail_dir_sync
        .store(false, std::sync::atomic::Ordering::SeqCst);
    c.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nfirst try\r\n.\r\nQUIT\r\n")
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    assert_eq!(task.await.unwrap().messages, 1);
    assert_eq!(s.messages().len(), 1);
}
