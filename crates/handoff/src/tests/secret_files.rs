//! The secret-file rule on real files: FIFOs and devices are refused at
//! once; ownership and write bits of the file, of its ancestors and of the
//! directory of each symbolic link decide; certbot's layout passes. The
//! ownership cases need root (to chown); they skip with a printed reason
//! otherwise.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bind::open_file;
use crate::error::Error;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: the secret-file ownership rule applies to root only (running as a user)");
    false
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// A root-owned 0755 directory inside a fresh temporary directory (itself
/// 0700 and root's, under the root-owned sticky `/tmp`): what a real
/// `/etc/...` looks like.
fn root_dir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("etc");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    (temp, dir)
}

fn write(path: &Path, mode: u32) {
    std::fs::write(path, "secret").unwrap();
    chmod(path, mode);
}

/// The error of opening `path`, which must be an `UnsafeSecretPath`
/// naming `culprit` and `fix`.
fn refused(path: &Path, culprit: &Path, fix: &str) -> String {
    match open_file(path) {
        Err(err @ Error::UnsafeSecretPath { .. }) => {
            let Error::UnsafeSecretPath { culprit: found, .. } = &err else {
                unreachable!()
            };
            let text = err.to_string();
            assert_eq!(found, culprit, "{text}");
            assert!(text.contains(fix), "{fix:?} missing: {text}");
            assert!(text.contains(&format!("{:?}", path)), "{text}");
            text
        }
        other => panic!("{path:?}: expected UnsafeSecretPath, got {other:?}"),
    }
}

#[test]
fn a_fifo_is_refused_at_once_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Without O_NONBLOCK the open blocks until a writer comes: run it on a
    // thread so that a regression fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || tx.send(open_file(&path)).unwrap());
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("open_file blocked on a FIFO");
    let err = result.unwrap_err();
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("FIFO"), "{text}");
    assert!(text.contains(&format!("{fifo:?}")), "{text}");
}

#[test]
fn devices_and_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (path, kind) in [
        (Path::new("/dev/null"), "character device"),
        (dir.path(), "directory"),
    ] {
        let started = Instant::now();
        let err = open_file(path).unwrap_err();
        assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
        assert!(err.to_string().contains(kind), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

#[test]
fn the_descriptor_is_blocking_and_close_on_exec() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    write(&key, 0o600);
    let file = open_file(&key).unwrap();
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(flags & libc::O_NONBLOCK, 0);
    let fd_flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
}

#[test]
fn group_or_other_writable_directories_and_files_are_refused() {
    if !is_root() {
        return;
    }
    let (_temp, dir) = root_dir();
    let key = dir.join("key.pem");
    write(&key, 0o600);
    assert!(open_file(&key).is_ok());

    chmod(&dir, 0o775);
    refused(&key, &dir, &format!("chmod g-w {}", dir.display()));
    chmod(&dir, 0o757);
    refused(&key, &dir, &format!("chmod o-w {}", dir.display()));
    chmod(&dir, 0o777);
    refused(&key, &dir, &format!("chmod go-w {}", dir.display()));
    chmod(&dir, 0o755);

    chmod(&key, 0o620);
    refused(&key, &key, &format!("chmod g-w {}", key.display()));
    chmod(&key, 0o600);
    assert!(open_file(&key).is_ok());
}

#[test]
fn a_file_or_directory_owned_by_the_service_user_is_refused() {
    if !is_root() {
        return;
    }
    let (_temp, dir) = root_dir();
    let keys = dir.join("keys");
    std::fs::create_dir(&keys).unwrap();
    chmod(&keys, 0o755);
    let key = keys.join("key.pem");
    write(&key, 0o600);
    chown(&key, NOBODY);
    let text = refused(&key, &key, &format!("chown root {}", key.display()));
    assert!(text.contains("uid 65534"), "{text}");
    chown(&key, 0);
    chown(&keys, NOBODY);
    refused(&key, &keys, &format!("chown root {}", keys.display()));
    chown(&keys, 0);
    assert!(open_file(&key).is_ok());
}

#[test]
fn a_symlink_in_a_directory_the_service_user_owns_is_refused() {
    if !is_root() {
        return;
    }
    // The attack: the service user owns `drop/`, and links `key.pem` there
    // to a root-only file elsewhere, which is itself in a safe place.
    let (_temp, dir) = root_dir();
    let secret = dir.join("shadow");
    write(&secret, 0o600);
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    chmod(&drop, 0o755);
    chown(&drop, NOBODY);
    let link = drop.join("key.pem");
    symlink(&secret, &link).unwrap();
    chown(&link, NOBODY);
    refused(&link, &drop, "chown root");
    // A link to that directory, from a safe place, is refused as well: the
    // directory is looked up on the way.
    let via = dir.join("via");
    symlink(&drop, &via).unwrap();
    refused(&via.join("key.pem"), &drop, "chown root");
}

#[test]
fn certbot_links_from_live_into_archive_are_followed() {
    if !is_root() {
        return;
    }
    // /etc/letsencrypt as certbot lays it out: live/NAME/*.pem are relative
    // links into archive/NAME/*N.pem; live and archive are 0700 (older
    // certbot) or 0755, privkey 0600, all root's.
    let (_temp, etc) = root_dir();
    let le = etc.join("letsencrypt");
    let archive = le.join("archive/gw.test");
    let live = le.join("live/gw.test");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    chmod(&le, 0o755);
    chmod(&le.join("archive"), 0o700);
    chmod(&le.join("live"), 0o700);
    chmod(&archive, 0o755);
    chmod(&live, 0o755);
    write(&archive.join("privkey1.pem"), 0o600);
    write(&archive.join("fullchain1.pem"), 0o644);
    symlink(
        "../../archive/gw.test/privkey1.pem",
        live.join("privkey.pem"),
    )
    .unwrap();
    symlink(
        "../../archive/gw.test/fullchain1.pem",
        live.join("fullchain.pem"),
    )
    .unwrap();
    for name in ["privkey.pem", "fullchain.pem"] {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_file(&live.join(name)).unwrap(), &mut text)
            .unwrap();
        assert_eq!(text, "secret");
    }
    // The archive directory turned group-writable is named as the culprit,
    // though the path given goes through live/.
    chmod(&archive, 0o775);
    refused(&live.join("privkey.pem"), &archive, "chmod g-w");
}

#[test]
fn sticky_directories_pass_only_when_root_owns_them() {
    if !is_root() {
        return;
    }
    let (_temp, dir) = root_dir();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let key = shared.join("key.pem");
    write(&key, 0o600);
    assert!(open_file(&key).is_ok(), "a root-owned sticky directory");
    chown(&shared, NOBODY);
    refused(&key, &shared, "chown root");
    chown(&shared, 0);
    chmod(&shared, 0o0777);
    refused(&key, &shared, "chmod go-w");
}
