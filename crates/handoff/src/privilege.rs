//! The unprivileged user the child runs as, the child's proof that it
//! cannot become root again, and the same drop done in place by a process
//! that was started as root without a privileged parent (socket
//! activation, a unit without `User=`).

use std::fmt;

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

/// The user (and its primary group) the unprivileged child runs as.
///
/// ```
/// use lifecycle_handoff::TargetUser;
///
/// let root = TargetUser::lookup("root").unwrap();
/// assert_eq!((root.uid(), root.gid()), (0, 0));
/// assert_eq!(TargetUser::lookup("0").unwrap(), root);
/// assert!(TargetUser::lookup("no-such-user-here").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TargetUser {
    /// Looks up `user`, a user name or a numeric uid, in the user database.
    /// Its primary group becomes the child's only group. A numeric uid
    /// without a database entry runs with the group of the same number.
    ///
    /// Do this before binding anything, so an unknown user fails the start
    /// at once.
    pub fn lookup(user: &str) -> Result<TargetUser> {
        let fail = |source: nix::errno::Errno| Error::UserLookup {
            user: user.to_owned(),
            source: source.into(),
        };
        if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
            let uid: u32 = user.parse().map_err(|_| Error::UnknownUser {
                user: user.to_owned(),
            })?;
            return Ok(match User::from_uid(Uid::from_raw(uid)).map_err(fail)? {
                Some(entry) => TargetUser::from(entry),
                None => TargetUser {
                    name: user.to_owned(),
                    uid,
                    gid: uid,
                },
            });
        }
        match User::from_name(user).map_err(fail)? {
            Some(entry) => Ok(TargetUser::from(entry)),
            None => Err(Error::UnknownUser {
                user: user.to_owned(),
            }),
        }
    }

    /// A user given by ids, without a lookup.
    pub fn from_ids(name: impl Into<String>, uid: u32, gid: u32) -> TargetUser {
        TargetUser {
            name: name.into(),
            uid,
            gid,
        }
    }

    /// The user name (or the number it was given as).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The primary group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// True for uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

impl From<User> for TargetUser {
    fn from(user: User) -> Self {
        TargetUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl fmt::Display for TargetUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

/// Checks, in the unprivileged child, that it cannot become root again:
/// neither real nor effective ids are 0, `setuid(0)` and `setgid(0)` fail.
/// Refuse to run when this fails.
pub fn verify_cannot_regain_root() -> Result<()> {
    let ids = format!(
        "uid {} euid {} gid {} egid {}",
        Uid::current(),
        Uid::effective(),
        Gid::current(),
        Gid::effective()
    );
    if Uid::current().is_root() || Uid::effective().is_root() {
        return Err(Error::StillPrivileged {
            detail: format!("still running as root ({ids})"),
        });
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(Error::StillPrivileged {
            detail: format!("setuid(0) succeeded ({ids})"),
        });
    }
    if nix::unistd::setgid(Gid::from_raw(0)).is_ok() {
        return Err(Error::StillPrivileged {
            detail: format!("setgid(0) succeeded ({ids})"),
        });
    }
    Ok(())
}

/// Drops this process from root to `user` in place, with the same sequence
/// and proof as the privileged child: `setgroups([])`, `setgid`, `setuid`,
/// `PR_SET_NO_NEW_PRIVS`, then [`verify_cannot_regain_root`]. Moving every
/// user id away from 0 also clears the capability sets.
///
/// For a service that root starts with its descriptors already made (under
/// systemd socket activation, or a parent that kept root): call it first
/// thing in `main`, right after [`Handoff::detect`](crate::Handoff::detect)
/// and before any other thread exists (a logger, a runtime). The ids are
/// per thread in the kernel; a thread started earlier would keep root.
/// The call checks this (`/proc/self/task`) and refuses with
/// [`Error::NotSingleThreaded`] without changing anything.
///
/// Whatever needs root must be done before: creating directories for the
/// user, opening root-only files.
///
/// ```no_run
/// use lifecycle_handoff::{drop_privileges_in_place, Handoff, Mode, TargetUser};
///
/// # fn main() -> Result<(), lifecycle_handoff::Error> {
/// let handoff = Handoff::detect("LIFECYCLE")?; // takes LISTEN_FDS
/// if handoff.mode() == Mode::Systemd && nix::unistd::geteuid().is_root() {
///     drop_privileges_in_place(&TargetUser::lookup("nobody")?)?;
/// }
/// // ... now start threads and serve.
/// # Ok(())
/// # }
/// ```
pub fn drop_privileges_in_place(user: &TargetUser) -> Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::NotSingleThreaded {
            operation: "dropping privileges in place",
            threads,
        });
    }
    let fail = |step: &'static str| {
        move |errno: nix::errno::Errno| Error::DropPrivileges {
            user: user.to_string(),
            step,
            source: errno.into(),
        }
    };
    nix::unistd::setgroups(&[]).map_err(fail("setgroups([])"))?;
    nix::unistd::setgid(Gid::from_raw(user.gid())).map_err(fail("setgid"))?;
    nix::unistd::setuid(Uid::from_raw(user.uid())).map_err(fail("setuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(fail("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    verify_cannot_regain_root()
}

/// The number of threads of this process (entries of `/proc/self/task`).
fn thread_count() -> Result<usize> {
    let fail = |source| Error::DropPrivileges {
        user: "(any)".to_owned(),
        step: "count threads in /proc/self/task",
        source,
    };
    let entries = std::fs::read_dir("/proc/self/task").map_err(fail)?;
    let mut count = 0;
    for entry in entries {
        entry.map_err(fail)?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_thread_stops_the_drop_before_anything_changes() {
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        let before = (Uid::current(), Gid::current());
        let user = TargetUser::from_ids("nobody", 65534, 65534);
        let err = drop_privileges_in_place(&user).unwrap_err();
        drop(stop);
        let _ = other.join();
        assert!(
            matches!(err, Error::NotSingleThreaded { threads, .. } if threads >= 2),
            "{err:?}"
        );
        assert!(err.to_string().contains("before any other thread"), "{err}");
        assert_eq!((Uid::current(), Gid::current()), before);
    }
}
