//! Running one of our binaries as the service user (`nobody`) from a test
//! that runs as root.
//!
//! Two things stand in the way when the checkout lies under a directory
//! that user cannot traverse (a `0700` home directory such as `/root`):
//! the binary in the target directory cannot be executed by path, and each
//! test used to drop privileges its own way. [`ServiceUser`] does both the
//! same way everywhere:
//!
//! - [`ServiceUser::install`] copies the program into a fresh `0755`
//!   temporary directory (always, so the tests behave the same from any
//!   checkout), after checking that the user can reach that directory;
//! - [`ServiceUser::drop_privileges`] makes a [`Command`] run as the user,
//!   with the sequence the gateway's own drop uses: `setgroups([])`,
//!   `setgid`, `setuid`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Gid, Uid};

/// Why a program cannot be run as the service user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceUserError {
    /// The user database has no such user.
    #[error("no user `{0}` to run the service as: create it (e.g. `useradd --system {0}`)")]
    NoSuchUser(String),
    /// Reading the user database failed.
    #[error("cannot look up user `{user}`: {source}")]
    Lookup {
        /// The user looked up.
        user: String,
        /// What failed.
        #[source]
        source: nix::Error,
    },
    /// A directory above the installed copy is not searchable by others.
    #[error(
        "{} is not searchable by other users (mode {mode:o}), so the service user cannot reach \
         programs installed below it: set TMPDIR to a directory everyone may traverse (e.g. /tmp)",
        dir.display()
    )]
    Untraversable {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Copying the program failed.
    #[error("cannot install {} as {}: {detail}", program.display(), copy.display())]
    Install {
        /// The program copied.
        program: PathBuf,
        /// Where the copy was to go.
        copy: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A file-system call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

impl From<ServiceUserError> for io::Error {
    fn from(error: ServiceUserError) -> io::Error {
        io::Error::other(error)
    }
}

/// The unprivileged user the tests run the service as when they run as
/// root.
///
/// ```no_run
/// use lifecycle_tests::ServiceUser;
/// use std::process::Command;
///
/// let user = ServiceUser::nobody()?;
/// let program = user.install("/bin/true".as_ref())?;
/// let mut command = Command::new(program.path());
/// user.drop_privileges(&mut command);
/// assert!(command.status()?.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceUser {
    uid: Uid,
    gid: Gid,
}

impl ServiceUser {
    /// The user `nobody` (and its primary group).
    pub fn nobody() -> Result<ServiceUser, ServiceUserError> {
        Self::lookup("nobody")
    }

    /// `nobody` when this process runs as root, else `None` (the tests
    /// then run the service as themselves).
    pub fn when_root() -> Result<Option<ServiceUser>, ServiceUserError> {
        match nix::unistd::geteuid().is_root() {
            true => Self::nobody().map(Some),
            false => Ok(None),
        }
    }

    /// The user named `name` (and its primary group).
    pub fn lookup(name: &str) -> Result<ServiceUser, ServiceUserError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| ServiceUserError::Lookup {
                user: name.to_owned(),
                source,
            })?
            .ok_or_else(|| ServiceUserError::NoSuchUser(name.to_owned()))?;
        Ok(ServiceUser {
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// The user id.
    pub fn uid(&self) -> Uid {
        self.uid
    }

    /// The primary group id.
    pub fn gid(&self) -> Gid {
        self.gid
    }

    /// Hands `path` (not recursively) to the user and its group.
    pub fn chown(&self, path: &Path) -> Result<(), ServiceUserError> {
        std::os::unix::fs::chown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw())).map_err(
            |source| ServiceUserError::Io {
                what: "cannot chown",
                path: path.to_owned(),
                source,
            },
        )
    }

    /// Copies `program` into a fresh temporary directory that everyone may
    /// search (`0755`) and makes the copy `0755`, so that this user can
    /// execute it wherever the checkout lies; fails if a directory above
    /// the copy is not searchable by others. The copy is removed when the
    /// returned value is dropped: keep it while the program (or a
    /// successor it executes from disk) runs.
    pub fn install(&self, program: &Path) -> Result<Installed, ServiceUserError> {
        let dir = crate::paths::temp_dir("installed").map_err(|source| ServiceUserError::Io {
            what: "cannot create a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
        set_mode(dir.path(), 0o755)?;
        for ancestor in dir.path().ancestors().skip(1) {
            let mode = std::fs::metadata(ancestor)
                .map_err(|source| ServiceUserError::Io {
                    what: "cannot stat",
                    path: ancestor.to_owned(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                return Err(ServiceUserError::Untraversable {
                    dir: ancestor.to_owned(),
                    mode: mode & 0o7777,
                });
            }
        }
        let name = program.file_name().unwrap_or(program.as_os_str());
        let path = dir.path().join(name);
        install_program(program, &path)?;
        Ok(Installed { dir, path })
    }

    /// Makes `command` run as this user: between fork and exec, after any
    /// `pre_exec` hook already added, the child calls `setgroups([])`,
    /// `setgid` and `setuid` (the gateway's own drop does the same). Only
    /// root may do so: as another user the spawn fails with `EPERM`.
    pub fn drop_privileges(&self, command: &mut Command) {
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: between fork and exec the closure makes only
        // async-signal-safe system calls (setgroups, setgid, setuid) on
        // values computed before the fork; it allocates nothing and takes
        // no lock.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setgroups(&[]).map_err(io::Error::from)?;
                nix::unistd::setgid(gid).map_err(io::Error::from)?;
                nix::unistd::setuid(uid).map_err(io::Error::from)?;
                Ok(())
            });
        }
    }

    /// [`install`](Self::install)s `program` and returns a command that
    /// runs the copy as this user, with the copy to keep alive.
    pub fn command(&self, program: &Path) -> Result<(Command, Installed), ServiceUserError> {
        let installed = self.install(program)?;
        let mut command = Command::new(installed.path());
        self.drop_privileges(&mut command);
        Ok((command, installed))
    }
}

/// A copy of a program that any user may execute, in a temporary directory
/// removed when this value is dropped (see [`ServiceUser::install`]).
#[derive(Debug)]
pub struct Installed {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Installed {
    /// The copy.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the copy (mode `0755`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Copies `program` to `copy` with mode `0755` (replacing `copy` if it
/// exists).
///
/// The copy is written by a `cp` child process, never through a descriptor
/// of this process: a test thread that forks while another one holds the
/// copy open for writing hands that descriptor to its child until the
/// child's exec, and executing the copy in that window fails with
/// `ETXTBSY` ("Text file busy"). With `cp` no such descriptor exists here.
pub fn install_program(program: &Path, copy: &Path) -> Result<(), ServiceUserError> {
    let failed = |detail: String| ServiceUserError::Install {
        program: program.to_owned(),
        copy: copy.to_owned(),
        detail,
    };
    let output = Command::new("cp")
        .arg("--")
        .arg(program)
        .arg(copy)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run cp: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "cp {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    set_mode(copy, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ServiceUserError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ServiceUserError::Io {
            what: "cannot chmod",
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_and_its_directory_are_open_to_everyone() {
        let user = ServiceUser {
            uid: Uid::from_raw(65534),
            gid: Gid::from_raw(65534),
        };
        let source = tempfile::tempdir().unwrap();
        std::fs::set_permissions(source.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let program = source.path().join("program");
        std::fs::write(&program, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
        let installed = user.install(&program).unwrap();
        assert_eq!(std::fs::read(installed.path()).unwrap(), b"#!/bin/sh\n");
        for path in [installed.path(), installed.dir()] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{}", path.display());
        }
        let dir = installed.dir().to_owned();
        drop(installed);
        assert!(!dir.exists());
    }

    /// From a checkout under a `0700` directory: the service user runs the
    /// installed copy, with no supplementary group left.
    #[test]
    fn a_program_under_a_0700_directory_runs_as_the_service_user() {
        if !crate::require_root("running a program as nobody") {
            return;
        }
        let user = ServiceUser::nobody().unwrap();
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let cat = home.path().join("cat");
        std::fs::copy("/bin/cat", &cat).unwrap();
        let (mut command, _installed) = user.command(&cat).unwrap();
        let output = command.arg("/proc/self/status").output().unwrap();
        let status = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{output:?}");
        for line in [
            "Uid:\t65534\t65534\t65534\t65534",
            "Gid:\t65534\t65534\t65534\t65534",
        ] {
            assert!(status.lines().any(|l| l == line), "{line:?} in {status}");
        }
        let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert_eq!(groups.trim_end(), "Groups:", "{status}");
    }

    #[test]
    fn a_failed_copy_names_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = install_program(&missing, &dir.path().join("copy")).unwrap_err();
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
    }
}
