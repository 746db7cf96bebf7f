//! The unprivileged user the child runs as, and the child's proof that it
//! cannot become root again.

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
