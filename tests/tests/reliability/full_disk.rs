//! Full disk: with the spool on a small tmpfs, the SMTP sink answers 452
//! and never 250 for a message it could not store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifecycle_tests::{loud, metric_value, GatewayProcess};
use nix::sys::signal::Signal;

use super::smtp::{body, queued_id, spool_files, spooled, tmp_files, without_trace, Smtp};
use super::{assert_no_panic, figure, gateway, turn};

/// Size of the spool file system.
const TMPFS: &str = "size=2m";
/// Size of each message: a few fit, then the disk is full.
const MESSAGE: usize = 300 * 1024;
const MESSAGES: usize = 12;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path) -> Result<Mount, String> {
        if !lifecycle_tests::require_root("mounting a tmpfs for the spool") {
            return Err("not root".into());
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS, "lifecycle-spool"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_spool_answers_452_and_never_250() {
    let _turn = turn();
    let dir = lifecycle_tests::temp_dir("full-disk").expect("temp dir");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("mount point");
    let _mount = match Mount::tmpfs(&spool) {
        Ok(m) => m,
        Err(why) => {
            loud(&format!(
                "SKIP: full disk: cannot mount a tmpfs ({why}); the check did not run"
            ));
            return;
        }
    };
    let mut gw = GatewayProcess::builder(gateway())
        .spool_dir(&spool)
        .start()
        .expect("start the gateway");
    let mut c = Smtp::connect(gw.smtp).expect("connect");
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut other = Vec::new();
    for n in 0..MESSAGES {
        let tag = format!("full-{n}");
        let reply = c.deliver(&body(&tag, MESSAGE)).expect("deliver");
        if let Some(id) = queued_id(&reply) {
            acked.push((id, tag));
        } else if reply.starts_with("452 ") {
            refused += 1;
        } else {
            other.push(reply);
        }
    }
    let files = spool_files(&spool);
    let stored_when_full = files.len();
    let tmp_when_full = tmp_files(&spool);
    let intact = acked
        .iter()
        .filter(|(id, tag)| {
            std::fs::read(spool.join(format!("{id}.eml")))
                .is_ok_and(|content| without_trace(&content) == spooled(&body(tag, MESSAGE)))
        })
        .count();
    // Space again: the same session stores again.
    for (_, path) in files.iter().take(2) {
        std::fs::remove_file(path).expect("free space");
    }
    let again = c.deliver(&body("after-freeing", 2048)).expect("deliver");
    let metrics = gw.metrics().expect("metrics");
    let spool_errors = metric_value(
        &metrics,
        "lifecycle_smtp_messages_total",
        &[("outcome", "spool_error")],
    );
    figure(
        "full_disk",
        &format!(
            "tmpfs {TMPFS}; {MESSAGES} messages of {MESSAGE} bytes: 250={} 452={refused} other={}; \
             files stored={stored_when_full} (intact {intact}), tmp files={tmp_when_full}; spool_error counter={spool_errors:?}; \
             after freeing space: {:?}",
            acked.len(),
            other.len(),
            again.trim_end()
        ),
    );
    assert!(
        other.is_empty(),
        "replies other than 250 and 452: {other:?}"
    );
    assert!(refused > 0, "the spool never filled up");
    assert!(!acked.is_empty(), "nothing fit in the spool");
    assert_eq!(
        stored_when_full,
        acked.len(),
        "one file per 250, none for a 452"
    );
    assert_eq!(
        intact,
        acked.len(),
        "acknowledged messages present and intact"
    );
    assert_eq!(tmp_when_full, 0, "failed writes left temporary files");
    assert_eq!(spool_errors, Some(refused as f64), "spool_error counter");
    assert!(again.starts_with("250 "), "after freeing space: {again:?}");
    assert_no_panic(&gw);
    gw.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(gw
        .wait_exit(Duration::from_secs(20))
        .expect("wait")
        .is_some());
}
