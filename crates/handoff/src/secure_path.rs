//! The rule for secret files that root opens on behalf of an unprivileged
//! service, modelled on OpenSSH's `StrictModes` (`secure_path`): nobody but
//! root may be able to change which file a path names, nor the file itself.
//!
//! The rule, checked on the path as the kernel resolves it:
//!
//! - every directory in which a name is looked up — each ancestor of the
//!   resolved file and the directory holding each symbolic link followed on
//!   the way — is owned by root and not writable by its group or others;
//!   a root-owned directory with the sticky bit (such as `/tmp`, mode 1777)
//!   may be writable by all, because there nobody can rename or remove
//!   another user's entries (and the entry below it must pass the rule);
//! - the file itself is owned by root and not writable by its group or
//!   others.
//!
//! Group write is refused whatever the group (with POSIX ACLs the group
//! bits show the ACL mask, so a named user with write access counts too).
//! Symbolic links are followed and allowed where they sit in such
//! directories: certbot's `live/NAME/privkey.pem ->
//! ../../archive/NAME/privkey1.pem` passes.

use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// At most this many symbolic links on one path, as Linux's `ELOOP` limit.
const MAX_SYMLINKS: usize = 40;

/// Permission bits for write by group and by others.
const GROUP_OTHER_WRITE: u32 = 0o022;

/// The sticky bit (`S_ISVTX`).
const STICKY: u32 = 0o1000;

/// Checks that `path`, already opened as the file described by `opened`
/// (its `fstat`), follows the rule of this module for owner `trusted`
/// (root's uid, 0, for a privileged opener).
pub(crate) fn check_secure_path(path: &Path, opened: &Metadata, trusted: u32) -> Result<()> {
    let resolved = walk(path, trusted)?;
    // The path must still name the file that was opened: otherwise what was
    // checked is not what is held.
    let now = std::fs::metadata(&resolved).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    if (now.dev(), now.ino()) != (opened.dev(), opened.ino()) {
        return Err(Error::SecretPathChanged {
            path: path.to_owned(),
            resolved,
        });
    }
    judge(path, &resolved, opened, trusted, false)
}

/// Resolves `path` component by component, checking every directory in
/// which a name is looked up; returns the resolved path of the file.
fn walk(path: &Path, trusted: u32) -> Result<PathBuf> {
    let fail = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map_err(fail)?.join(path)
    };
    // Components still to resolve, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, &absolute);
    let mut resolved = PathBuf::from("/");
    let mut checked: Vec<PathBuf> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        match name.to_str() {
            Some("/") => {
                resolved = PathBuf::from("/");
                continue;
            }
            Some(".") => continue,
            Some("..") => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        // A name is looked up in `resolved`: whoever can write there
        // decides what the name is.
        if !checked.contains(&resolved) {
            let meta = std::fs::symlink_metadata(&resolved).map_err(fail)?;
            judge(path, &resolved, &meta, trusted, true)?;
            checked.push(resolved.clone());
        }
        let next = resolved.join(&name);
        let meta = std::fs::symlink_metadata(&next).map_err(fail)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(fail(std::io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = std::fs::read_link(&next).map_err(fail)?;
            push_components(&mut pending, &target);
        } else {
            resolved = next;
        }
    }
    Ok(resolved)
}

/// Pushes the components of `path` onto `pending` so that the first one
/// is popped first; an absolute path starts with `/` (back to the root).
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    for component in path.components().rev() {
        let name = match component {
            Component::RootDir => OsString::from("/"),
            Component::CurDir => OsString::from("."),
            Component::ParentDir => OsString::from(".."),
            Component::Normal(name) => name.to_owned(),
            Component::Prefix(_) => continue,
        };
        pending.push(name);
    }
}

/// Applies the rule to one directory (`dir` true) or to the file.
fn judge(path: &Path, culprit: &Path, meta: &Metadata, trusted: u32, dir: bool) -> Result<()> {
    let what = if dir { "directory" } else { "file" };
    let mode = meta.mode();
    let refuse = |problem: String, fix: String| Error::UnsafeSecretPath {
        path: path.to_owned(),
        culprit: culprit.to_owned(),
        what,
        problem,
        fix,
    };
    if meta.uid() != trusted {
        return Err(refuse(
            format!(
                "is owned by {}, who could {}",
                user_name(meta.uid()),
                if dir {
                    "replace the names in it (with a symbolic link to another file)"
                } else {
                    "change it"
                }
            ),
            format!(
                "`chown {} {}`, or keep the file elsewhere",
                match trusted {
                    0 => "root".to_owned(),
                    uid => uid.to_string(),
                },
                culprit.display()
            ),
        ));
    }
    let sticky_root_dir = dir && mode & STICKY != 0;
    if mode & GROUP_OTHER_WRITE != 0 && !sticky_root_dir {
        let (who, bits) = match mode & GROUP_OTHER_WRITE {
            0o020 => (format!("its group (gid {})", meta.gid()), "g-w"),
            0o002 => ("all users".to_owned(), "o-w"),
            _ => (
                format!("its group (gid {}) and all users", meta.gid()),
                "go-w",
            ),
        };
        return Err(refuse(
            format!("(mode {:04o}) is writable by {who}", mode & 0o7777),
            format!("`chmod {bits} {}`", culprit.display()),
        ));
    }
    Ok(())
}

/// `name (uid N)` when the user database knows `uid`, else `uid N`.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// What a non-regular file is, for the error message.
pub(crate) fn file_kind(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO (named pipe)"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}
