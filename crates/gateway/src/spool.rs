//! The durable message spool: one file per accepted message.
//!
//! A message is written to `tmp/<id>.tmp` inside the spool directory,
//! fsync'd, renamed to `<id>.eml` in the spool directory, and the directory is
//! fsync'd, all before [`Spool::store`] returns. Only then may the SMTP layer
//! answer `250`: an acknowledged message survives a crash or power loss, and
//! a message file is never visible half-written. Temporary files left by a
//! crash are removed when the spool is next opened.
//!
//! ```
//! use lifecycle_gateway::Spool;
//!
//! let dir = tempfile::tempdir()?;
//! let log = slog::Logger::root(slog::Discard, slog::o!());
//! let spool = Spool::open(dir.path(), &log)?;
//! let stored = spool.store(&[b"Subject: hi\r\n\r\nhello\r\n"])?;
//! assert_eq!(std::fs::read(&stored.path)?, b"Subject: hi\r\n\r\nhello\r\n");
//! assert_eq!(spool.messages()?, vec![stored.path.clone()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{info, warn, Logger};

/// Name of the subdirectory that holds files being written.
pub const TMP_DIR: &str = "tmp";
/// Extension of a complete message file.
pub const MESSAGE_EXT: &str = "eml";
const TMP_EXT: &str = "tmp";

/// Why a message could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file system is full or the quota is exhausted (ENOSPC, EDQUOT).
    #[error("spool {} is full ({source}); free space or raise the quota", dir.display())]
    Full {
        /// The spool directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O error while preparing the spool or writing a message.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `write`, `fsync`, `rename`, ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The blocking write task died (it panicked or the runtime is stopping).
    #[error("the spool write task did not finish: {0}")]
    Task(String),
}

impl SpoolError {
    /// True for ENOSPC and EDQUOT: storage is exhausted, not broken.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full { .. })
    }
}

/// A message that is durably in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message id (the file stem), unique per spool.
    pub id: String,
    /// The final path of the message file.
    pub path: PathBuf,
    /// Bytes written.
    pub len: u64,
}

/// A spool directory. Cheap to share behind an [`Arc`]; every method may be
/// called from many threads.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    pid: u32,
    counter: AtomicU64,
}

impl Spool {
    /// Opens (creating if needed) the spool at `dir` and its `tmp/`
    /// subdirectory, and removes temporary files left behind by a process
    /// that no longer runs (logging how many).
    pub fn open(dir: impl Into<PathBuf>, log: &Logger) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| classify("create", &tmp, &dir, e))?;
        let spool = Spool {
            dir,
            tmp,
            pid: std::process::id(),
            counter: AtomicU64::new(0),
        };
        let (removed, kept) = spool.clean_tmp()?;
        if removed > 0 {
            warn!(log, "removed unfinished spool files left by an earlier run";
                "count" => removed, "dir" => %spool.tmp.display());
        }
        if kept > 0 {
            info!(log, "left temporary spool files of a running process alone";
                "count" => kept, "dir" => %spool.tmp.display());
        }
        info!(log, "spool ready"; "dir" => %spool.dir.display(), "stale_temporary_files_removed" => removed);
        Ok(spool)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the concatenation of `parts` as one message and makes it
    /// durable (file fsync, rename, directory fsync). Blocking: call it
    /// from a blocking thread, or use [`Spool::store_async`].
    pub fn store(&self, parts: &[&[u8]]) -> Result<StoredMessage, SpoolError> {
        let id = self.next_id();
        let tmp_path = self.tmp.join(format!("{id}.{TMP_EXT}"));
        let final_path = self.dir.join(format!("{id}.{MESSAGE_EXT}"));
        let result = self.write_file(&tmp_path, &final_path, parts);
        if result.is_err() {
            // Best effort: the message was not stored, leave nothing behind.
            let _ = fs::remove_file(&tmp_path);
        }
        let len = result?;
        Ok(StoredMessage {
            id,
            path: final_path,
            len,
        })
    }

    /// [`Spool::store`] on tokio's blocking thread pool, so the async thread
    /// never waits on the disk.
    pub async fn store_async(
        self: &Arc<Self>,
        message: Vec<u8>,
    ) -> Result<StoredMessage, SpoolError> {
        let spool = Arc::clone(self);
        tokio::task::spawn_blocking(move || spool.store(&[&message]))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// Paths of every complete message, sorted by name (arrival order
    /// within one process).
    pub fn messages(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_file() && path.extension().is_some_and(|e| e == MESSAGE_EXT) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    fn write_file(
        &self,
        tmp_path: &Path,
        final_path: &Path,
        parts: &[&[u8]],
    ) -> Result<u64, SpoolError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(tmp_path)
            .map_err(|e| classify("create", tmp_path, &self.dir, e))?;
        let mut len = 0u64;
        for part in parts {
            file.write_all(part)
                .map_err(|e| classify("write", tmp_path, &self.dir, e))?;
            len += part.len() as u64;
        }
        file.sync_all()
            .map_err(|e| classify("fsync", tmp_path, &self.dir, e))?;
        drop(file);
        fs::rename(tmp_path, final_path)
            .map_err(|e| classify("rename", final_path, &self.dir, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| classify("fsync directory", &self.dir, &self.dir, e))?;
        Ok(len)
    }

    /// A name unique across processes and time: seconds.nanoseconds.pid.counter.
    fn next_id(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.{:09}.{}.{}",
            now.as_secs(),
            now.subsec_nanos(),
            self.pid,
            n
        )
    }

    /// Removes temporary files whose writer is gone. Files of another live
    /// process (an upgrade running side by side) are left alone.
    fn clean_tmp(&self) -> Result<(usize, usize), SpoolError> {
        let mut removed = 0;
        let mut kept = 0;
        let entries =
            fs::read_dir(&self.tmp).map_err(|e| classify("list", &self.tmp, &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| classify("list", &self.tmp, &self.dir, e))?;
            let path = entry.path();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file {
                continue;
            }
            if let Some(pid) = writer_pid(&path) {
                if pid != self.pid && process_alive(pid) {
                    kept += 1;
                    continue;
                }
            }
            fs::remove_file(&path).map_err(|e| classify("remove", &path, &self.dir, e))?;
            removed += 1;
        }
        Ok((removed, kept))
    }
}

/// The pid in a temporary file name `secs.nanos.pid.counter.tmp`.
fn writer_pid(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let mut fields = name.split('.');
    let _secs = fields.next()?;
    let _nanos = fields.next()?;
    fields.next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

fn classify(action: &'static str, path: &Path, dir: &Path, source: io::Error) -> SpoolError {
    match source.raw_os_error() {
        Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => SpoolError::Full {
            dir: dir.to_owned(),
            source,
        },
        _ => SpoolError::Io {
            action,
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[test]
    fn stores_one_file_per_message_with_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), &log()).unwrap();
        let a = spool.store(&[b"a", b"b"]).unwrap();
        let b = spool.store(&[b"c"]).unwrap();
        assert_ne!(a.path, b.path);
        assert_eq!(fs::read(&a.path).unwrap(), b"ab");
        assert_eq!(a.len, 2);
        assert_eq!(spool.messages().unwrap(), vec![a.path, b.path]);
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn opening_removes_dead_writers_temp_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(TMP_DIR);
        fs::create_dir_all(&tmp).unwrap();
        // pid 0 is never a live writer; u32::MAX-1 is not a valid pid.
        fs::write(tmp.join("1.000000000.4294967294.0.tmp"), b"partial").unwrap();
        fs::write(tmp.join("garbage"), b"x").unwrap();
        // This test process is alive and is not "us" from the spool's view
        // only when the pid differs, so use the parent's pid (alive).
        let parent = std::os::unix::process::parent_id();
        let live = tmp.join(format!("1.000000000.{parent}.0.tmp"));
        fs::write(&live, b"in flight").unwrap();
        Spool::open(dir.path(), &log()).unwrap();
        let left: Vec<_> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![live]);
    }

    #[test]
    fn full_disk_is_classified() {
        let e = classify(
            "write",
            Path::new("x"),
            Path::new("d"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(e.is_full());
        assert!(e.to_string().contains("is full"), "{e}");
        let e = classify(
            "write",
            Path::new("x"),
            Path::new("d"),
            io::Error::from_raw_os_error(libc::EDQUOT),
        );
        assert!(e.is_full());
        let e = classify(
            "write",
            Path::new("x"),
            Path::new("d"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(!e.is_full());
    }

    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), &log()).unwrap();
        // Break the spool: the temporary directory disappears.
        fs::remove_dir(dir.path().join(TMP_DIR)).unwrap();
        let err = spool.store(&[b"x"]).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Io {
                    action: "create",
                    ..
                }
            ),
            "{err}"
        );
        assert!(spool.messages().unwrap().is_empty());
    }

    #[tokio::test]
    async fn store_async_runs_off_the_async_thread() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
        let stored = spool.store_async(b"hello".to_vec()).await.unwrap();
        assert_eq!(fs::read(stored.path).unwrap(), b"hello");
    }
}
