//! Executing the child's program by descriptor, not by path.
//!
//! The privileged parent opens the program (`O_PATH | O_CLOEXEC`) at every
//! spawn, while it is still root, and the child, after its privilege drop,
//! runs that descriptor with `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`.
//! The kernel then checks only the file itself (its execute permission for
//! the new ids, a `noexec` mount), never the directories on its path: a
//! binary under a `0700` home directory starts as `nobody` as long as the
//! file's own mode lets `nobody` execute it, which [`Program::open`] checks
//! before anything is forked.
//!
//! Why not `/proc/self/fd/N` through std's `Command`: it needs `/proc`
//! mounted and the descriptor at a number fixed before the fork. Here the
//! descriptor is moved above the placed ones between fork and exec (with the
//! hand-off descriptors, so a `dup2` into 3.. cannot clobber it) and used
//! wherever it lands; `argv` and `envp` are prepared before the fork, so the
//! exec itself allocates nothing.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::privilege::TargetUser;

/// The program a spawn executes: the descriptor the parent opened it with.
#[derive(Debug)]
pub(crate) struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Opens `path` now (`O_PATH | O_CLOEXEC`: no read permission needed,
    /// never inherited by accident) and checks that it is a regular file
    /// that `user` (no supplementary groups: the child drops them) may
    /// execute by its mode bits. `user` is `None` when the child keeps this
    /// process's ids: then only some execute bit must be set, the kernel
    /// decides the rest at exec.
    pub(crate) fn open(path: &Path, user: Option<&TargetUser>) -> Result<Program> {
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|errno| Error::ProgramOpen {
            program: path.to_owned(),
            source: errno.into(),
        })?;
        let stat = nix::sys::stat::fstat(&fd).map_err(|errno| Error::ProgramOpen {
            program: path.to_owned(),
            source: errno.into(),
        })?;
        check_executable(path, &FileMode::of(&stat), user)?;
        Ok(Program { fd })
    }

    /// The open program.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What decides who may execute a file: type, permission bits, owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileMode {
    /// `st_mode` (type and permission bits).
    pub(crate) mode: u32,
    /// The owner's uid.
    pub(crate) uid: u32,
    /// The owning group.
    pub(crate) gid: u32,
}

impl FileMode {
    fn of(stat: &libc::stat) -> FileMode {
        FileMode {
            mode: stat.st_mode,
            uid: stat.st_uid,
            gid: stat.st_gid,
        }
    }
}

/// Refuses, naming the file, the user and the fix, a program that is not a
/// regular file or whose mode does not let `user` execute it. The class
/// that applies is the kernel's: owner if the uid matches, else group if
/// the user's only group (its primary one) matches, else others. POSIX
/// ACLs are not read; a file that only an ACL makes executable is refused.
pub(crate) fn check_executable(
    path: &Path,
    file: &FileMode,
    user: Option<&TargetUser>,
) -> Result<()> {
    let who = user.map_or_else(|| "this process's user".to_owned(), ToString::to_string);
    let refuse = |detail: String, fix: String| Error::ProgramNotExecutable {
        program: path.to_owned(),
        user: who.clone(),
        detail,
        fix,
    };
    if file.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refuse(
            "it is not a regular file".to_owned(),
            "point the program at the executable file itself".to_owned(),
        ));
    }
    let bits = file.mode & 0o7777;
    let (bit, class, flag) = match user {
        None => (0o111, "anyone", "+x"),
        Some(u) if u.is_root() => (0o111, "anyone", "+x"),
        Some(u) if u.uid() == file.uid => (0o100, "its owner", "u+x"),
        Some(u) if u.gid() == file.gid => (0o010, "its group", "g+x"),
        Some(_) => (0o001, "others", "o+x"),
    };
    if bits & bit != 0 {
        return Ok(());
    }
    Err(refuse(
        format!(
            "its mode {bits:04o} (owner uid {}, group gid {}) gives {class} no execute permission",
            file.uid, file.gid
        ),
        format!(
            "run `chmod {flag} {}`, or install the program where that user may execute it \
             (for example /usr/local/bin, mode 0755)",
            path.display()
        ),
    ))
}

/// `argv` and `envp` as C arrays, built before the fork so that the exec
/// between fork and exec allocates nothing.
pub(crate) struct ExecArgs {
    /// Owns the strings the pointers below point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into `_strings`, owned by the same value
// and never changed after construction (a `CString`'s heap buffer does not
// move when the `CString` itself is moved), and they are only read.
unsafe impl Send for ExecArgs {}
// SAFETY: as above: shared access only ever reads.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    /// `argv` = `argv0` then `args`; `envp` = `env` as `NAME=value`.
    /// Refuses a NUL byte anywhere (it would cut the string short).
    pub(crate) fn new(
        argv0: &OsStr,
        args: &[OsString],
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> io::Result<ExecArgs> {
        let c = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a NUL byte in an argument or environment variable ({:?}); remove it",
                        String::from_utf8_lossy(&e.into_vec())
                    ),
                )
            })
        };
        let mut strings = Vec::new();
        strings.push(c(argv0.as_bytes().to_vec())?);
        for arg in args {
            strings.push(c(arg.as_bytes().to_vec())?);
        }
        let argc = strings.len();
        for (name, value) in env {
            let mut pair = name.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            strings.push(c(pair)?);
        }
        let mut argv: Vec<*const libc::c_char> =
            strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> =
            strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(ExecArgs {
            _strings: strings,
            argv,
            envp,
        })
    }

    /// Runs in the child between fork and exec (async-signal-safe): executes
    /// the open program `fd` (close-on-exec). Returns only on failure.
    ///
    /// A `#!` script cannot be run from a close-on-exec descriptor (its
    /// interpreter opens it again as `/dev/fd/N`, which exec would have
    /// closed): the kernel says `ENOENT` before anything is replaced. Then
    /// the descriptor is made inheritable and the exec retried, so scripts
    /// run too, with that one descriptor left open to the interpreter.
    pub(crate) fn exec(&self, fd: RawFd) -> io::Error {
        let error = self.execveat(fd);
        if error.raw_os_error() != Some(libc::ENOENT) {
            return error;
        }
        // SAFETY: F_SETFD only changes the flags of `fd`, which this
        // process holds (the plan placed it); async-signal-safe.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return error;
        }
        self.execveat(fd)
    }

    fn execveat(&self, fd: RawFd) -> io::Error {
        // SAFETY: execveat is a plain system call (async-signal-safe); the
        // path is a static empty C string, argv and envp are NULL-terminated
        // arrays of pointers to NUL-terminated strings owned by `self`.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        io::Error::last_os_error()
    }
}

/// The environment a child starts with: this process's, without `removed`,
/// with `set` on top (later entries win).
pub(crate) fn child_environment<'a>(
    removed: impl IntoIterator<Item = &'a OsStr>,
    set: impl IntoIterator<Item = (OsString, OsString)>,
) -> std::collections::BTreeMap<OsString, OsString> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for name in removed {
        env.remove(name);
    }
    env.extend(set);
    env
}

impl std::fmt::Debug for ExecArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecArgs")
            .field("argc", &self.argv.len().saturating_sub(1))
            .field("envc", &self.envp.len().saturating_sub(1))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, uid: u32, gid: u32) -> FileMode {
        FileMode {
            mode: libc::S_IFREG | mode,
            uid,
            gid,
        }
    }

    #[test]
    fn the_class_that_applies_decides() {
        let nobody = TargetUser::from_ids("nobody", 65534, 65534);
        let path = Path::new("/opt/gw/bin/gateway");
        let ok = |f: FileMode| check_executable(path, &f, Some(&nobody)).is_ok();
        assert!(ok(file(0o755, 0, 0)));
        assert!(ok(file(0o701, 0, 0)));
        assert!(!ok(file(0o750, 0, 0)));
        assert!(!ok(file(0o700, 0, 0)));
        assert!(ok(file(0o710, 0, 65534)));
        assert!(ok(file(0o100, 65534, 0)));
        // The owner class applies even where others could execute.
        assert!(!ok(file(0o011, 65534, 0)));
        // The group class applies even where others could execute.
        assert!(!ok(file(0o701, 0, 65534)));
        let root = TargetUser::from_ids("root", 0, 0);
        assert!(check_executable(path, &file(0o001, 5, 5), Some(&root)).is_ok());
        assert!(check_executable(path, &file(0o644, 0, 0), Some(&root)).is_err());
        assert!(check_executable(path, &file(0o700, 0, 0), None).is_ok());
    }

    #[test]
    fn a_refusal_names_the_file_the_user_and_the_fix() {
        let nobody = TargetUser::from_ids("nobody", 65534, 65534);
        let path = Path::new("/root/src/gw/target/release/gateway");
        let err = check_executable(path, &file(0o750, 0, 0), Some(&nobody)).unwrap_err();
        assert!(matches!(err, Error::ProgramNotExecutable { .. }), "{err:?}");
        let text = err.to_string();
        for part in [
            "/root/src/gw/target/release/gateway",
            "nobody (uid 65534, gid 65534)",
            "0750",
            "chmod o+x /root/src/gw/target/release/gateway",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        let dir = FileMode {
            mode: libc::S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
        };
        let text = check_executable(path, &dir, Some(&nobody))
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a regular file"), "{text}");
    }

    #[test]
    fn argv_and_envp_are_null_terminated_and_nul_bytes_are_refused() {
        let args = ExecArgs::new(
            OsStr::new("/bin/prog"),
            &["a".into(), "b".into()],
            [("K".into(), "v".into())],
        )
        .unwrap();
        assert_eq!(args.argv.len(), 4);
        assert!(args.argv[3].is_null());
        assert_eq!(args.envp.len(), 2);
        assert!(args.envp[1].is_null());
        let bad = ExecArgs::new(OsStr::new("/bin/prog"), &["a\0b".into()], []);
        assert_eq!(bad.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
