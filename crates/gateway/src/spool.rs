//! The durable message spool: one file per accepted message.
//!
//! A message is streamed to `tmp/<id>.tmp` inside the spool directory through
//! a [`SpoolWriter`] as it arrives, then [`SpoolWriter::commit`] fsyncs the
//! file, renames it to `<id>.eml` in the spool directory and fsyncs the
//! directory. Only then may the SMTP layer answer `250`: an acknowledged
//! message survives a crash or power loss, and a message file is never
//! visible half-written. A writer dropped before its commit removes its
//! temporary file (a rejected message, a client that hung up, an aborted
//! session), and a commit whose directory fsync fails removes the renamed
//! file again, so a message that was not acknowledged is never left stored.
//! Temporary files left by a crash are removed when the spool is next opened.
//!
//! ```
//! use std::sync::Arc;
//! use lifecycle_gateway::Spool;
//!
//! let dir = tempfile::tempdir()?;
//! let log = slog::Logger::root(slog::Discard, slog::o!());
//! let spool = Arc::new(Spool::open(dir.path(), &log)?);
//! let mut writer = spool.begin();
//! writer.write(b"Subject: hi\r\n\r\n")?;
//! writer.write(b"hello\r\n")?;
//! let stored = writer.commit()?;
//! assert_eq!(std::fs::read(&stored.path)?, b"Subject: hi\r\n\r\nhello\r\n");
//! assert_eq!(spool.messages()?, vec![stored.path.clone()]);
//!
//! // Dropped before its commit: nothing is left behind.
//! let mut writer = spool.begin();
//! writer.write(b"half a message")?;
//! drop(writer);
//! assert_eq!(spool.messages()?.len(), 1);
//! assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
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
    /// Test seam: the next directory fsyncs fail with EIO.
    #[cfg(test)]
    pub(crate) fail_dir_sync: std::sync::atomic::AtomicBool,
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
            #[cfg(test)]
            fail_dir_sync: std::sync::atomic::AtomicBool::new(false),
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

    /// Starts a message: returns the writer that streams it to a new
    /// temporary file (created at the first write or the commit). Does no
    /// I/O itself.
    pub fn begin(self: &Arc<Self>) -> SpoolWriter {
        let id = self.next_id();
        SpoolWriter {
            open: Some(OpenMessage {
                spool: Arc::clone(self),
                tmp_path: self.tmp.join(format!("{id}.{TMP_EXT}")),
                final_path: self.dir.join(format!("{id}.{MESSAGE_EXT}")),
                id,
                file: None,
                len: 0,
                done: false,
            }),
        }
    }

    /// Writes the concatenation of `parts` as one message and makes it
    /// durable: [`Spool::begin`], [`SpoolWriter::write`] and
    /// [`SpoolWriter::commit`] in one call. Blocking.
    pub fn store(self: &Arc<Self>, parts: &[&[u8]]) -> Result<StoredMessage, SpoolError> {
        let mut writer = self.begin();
        for part in parts {
            writer.write(part)?;
        }
        writer.commit()
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

    /// fsync of the spool directory (the test seam can make it fail).
    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_dir_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        File::open(&self.dir).and_then(|d| d.sync_all())
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

/// A message on its way into the spool: bytes are appended to its
/// temporary file, [`commit`](SpoolWriter::commit) makes it durable, and
/// dropping the writer before that removes the temporary file.
///
/// The plain methods block on the disk; the `_async` ones run the same work
/// on tokio's blocking thread pool, so an async thread never waits on the
/// disk. Whatever happens to the future (dropped, its task panicked), the
/// temporary file of a message that was not committed is removed.
#[derive(Debug)]
pub struct SpoolWriter {
    /// `None` while a blocking task holds it, or after that task was lost.
    open: Option<OpenMessage>,
}

#[derive(Debug)]
struct OpenMessage {
    spool: Arc<Spool>,
    id: String,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: Option<File>,
    len: u64,
    /// Committed (renamed) or already cleaned up: nothing to remove.
    done: bool,
}

impl SpoolWriter {
    /// The message id (the file stem it will get).
    pub fn id(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.id.as_str())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.len)
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` to the temporary file (created at the first call).
    /// Blocking.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.open_mut()?.write(bytes)
    }

    /// Makes the message durable: file fsync, rename to `<id>.eml`,
    /// directory fsync. When the directory fsync fails, the renamed file is
    /// removed again before the error is returned: the caller answers with a
    /// temporary failure, the client retries, and no unacknowledged copy
    /// stays behind. Blocking.
    pub fn commit(mut self) -> Result<StoredMessage, SpoolError> {
        let open = self.open.take().ok_or_else(lost)?;
        open.commit()
    }

    /// [`write`](Self::write) on the blocking thread pool. The bytes of
    /// `buf` are written and `buf` is cleared (its allocation is kept, so a
    /// session can reuse one fixed buffer for the whole message).
    pub async fn write_async(&mut self, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
        let mut open = self.open.take().ok_or_else(lost)?;
        let mut bytes = std::mem::take(buf);
        let (open, bytes, result) = tokio::task::spawn_blocking(move || {
            let result = open.write(&bytes);
            bytes.clear();
            (open, bytes, result)
        })
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?;
        self.open = Some(open);
        *buf = bytes;
        result
    }

    /// [`commit`](Self::commit) on the blocking thread pool.
    pub async fn commit_async(mut self) -> Result<StoredMessage, SpoolError> {
        let open = self.open.take().ok_or_else(lost)?;
        tokio::task::spawn_blocking(move || open.commit())
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    fn open_mut(&mut self) -> Result<&mut OpenMessage, SpoolError> {
        self.open.as_mut().ok_or_else(lost)
    }
}

fn lost() -> SpoolError {
    SpoolError::Task("an earlier write of this message did not finish".to_owned())
}

impl OpenMessage {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let dir = &self.spool.dir;
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o640)
                    .open(&self.tmp_path)
                    .map_err(|e| classify("create", &self.tmp_path, dir, e))?,
            ),
        };
        file.write_all(bytes)
            .map_err(|e| classify("write", &self.tmp_path, dir, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn commit(mut self) -> Result<StoredMessage, SpoolError> {
        if self.file.is_none() {
            // An empty message still gets its file.
            self.write(&[])?;
        }
        let dir = self.spool.dir.clone();
        if let Some(file) = self.file.take() {
            file.sync_all()
                .map_err(|e| classify("fsync", &self.tmp_path, &dir, e))?;
        }
        fs::rename(&self.tmp_path, &self.final_path)
            .map_err(|e| classify("rename", &self.final_path, &dir, e))?;
        self.done = true;
        if let Err(e) = self.spool.sync_dir() {
            // The rename may or may not survive a crash, and the client will
            // be told to retry: take the message back, so that the retry
            // does not leave a second copy.
            let _ = fs::remove_file(&self.final_path);
            return Err(classify("fsync directory", &dir, &dir, e));
        }
        Ok(StoredMessage {
            id: std::mem::take(&mut self.id),
            path: std::mem::take(&mut self.final_path),
            len: self.len,
        })
    }
}

impl Drop for OpenMessage {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the message was not stored, leave nothing behind.
            // Never created (no write yet) is fine too.
            drop(self.file.take());
            let _ = fs::remove_file(&self.tmp_path);
        }
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
        let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
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
        let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
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

    fn tmp_files(dir: &Path) -> usize {
        fs::read_dir(dir.join(TMP_DIR)).unwrap().count()
    }

    #[tokio::test]
    async fn a_message_streams_through_one_reused_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
        let mut writer = spool.begin();
        let mut buf = Vec::with_capacity(16);
        let capacity = buf.capacity();
        for chunk in [&b"hello "[..], b"streamed ", b"world"] {
            buf.extend_from_slice(chunk);
            writer.write_async(&mut buf).await.unwrap();
            assert!(buf.is_empty());
            assert_eq!(buf.capacity(), capacity, "the buffer is handed back");
        }
        assert_eq!(tmp_files(dir.path()), 1, "written to the temporary file");
        assert!(
            spool.messages().unwrap().is_empty(),
            "not visible before the commit"
        );
        let stored = writer.commit_async().await.unwrap();
        assert_eq!(fs::read(&stored.path).unwrap(), b"hello streamed world");
        assert_eq!(stored.len, 20);
        assert_eq!(tmp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_writer_dropped_before_its_commit_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
        let mut writer = spool.begin();
        writer.write_async(&mut b"partial".to_vec()).await.unwrap();
        assert_eq!(tmp_files(dir.path()), 1);
        drop(writer);
        assert_eq!(tmp_files(dir.path()), 0);
        assert!(spool.messages().unwrap().is_empty());
        // A writer that never wrote leaves nothing either; an empty commit
        // stores an empty message.
        drop(spool.begin());
        let empty = spool.begin().commit().unwrap();
        assert_eq!(fs::read(&empty.path).unwrap(), b"");
        assert_eq!(tmp_files(dir.path()), 0);
    }

    #[test]
    fn a_failed_directory_fsync_takes_the_renamed_message_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), &log()).unwrap());
        spool.fail_dir_sync.store(true, Ordering::SeqCst);
        let err = spool.store(&[b"unacknowledged"]).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Io {
                    action: "fsync directory",
                    ..
                }
            ),
            "{err}"
        );
        assert!(spool.messages().unwrap().is_empty(), "no copy stays");
        assert_eq!(tmp_files(dir.path()), 0);
        spool.fail_dir_sync.store(false, Ordering::SeqCst);
        assert!(spool.store(&[b"retried"]).is_ok());
        assert_eq!(spool.messages().unwrap().len(), 1);
    }
}
