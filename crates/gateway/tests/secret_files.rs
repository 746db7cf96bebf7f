//! The TLS files the root parent opens, at the start and at every upgrade,
//! are opened safely (as root; skipped with a printed reason otherwise): a
//! FIFO at the key path fails the start at once instead of hanging it, and
//! fails an upgrade while the old child serves on and the parent still
//! stops on SIGTERM; a key directory its group can write is refused;
//! certbot's `live/ -> archive/` links are served and followed again at an
//! upgrade.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::upgrading::{count, upgrade, Setup};
use common::{s_client, served_pem, Client, Gateway, SOON};
use lifecycle_tests::{loud, require_root, require_tool};
use nix::sys::signal::Signal;

/// Replaces the file at `path` with a FIFO (no writer ever comes).
fn fifo_at(path: &Path) {
    std::fs::remove_file(path).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Waits for the gateway started as `gw` to exit on its own; its
/// `lifecycle-gateway: ...` error line.
fn refused_start(mut gw: Gateway) -> String {
    let status = gw
        .wait_exit(SOON)
        .unwrap_or_else(|| panic!("still running (hung, or started):\n{}", gw.log_text()));
    assert!(!status.success(), "{status:?}\n{}", gw.log_text());
    gw.wait_log_end(SOON);
    let text = gw.log_text();
    assert!(!text.contains(r#""msg":"service started""#), "{text}");
    text.lines()
        .find(|l| l.starts_with("lifecycle-gateway: "))
        .unwrap_or_else(|| panic!("no error line:\n{text}"))
        .to_owned()
}

/// One plain SMTP transaction; the reply to DATA.
fn deliver(gw: &Gateway) -> String {
    let mut c = Client::connect(gw.smtp);
    c.expect("220");
    c.send("EHLO client.example\r\n");
    c.expect("250");
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    c.expect("250");
    c.expect("250");
    c.expect("354");
    c.send("Subject: t\r\n\r\nbody\r\n.\r\n");
    let reply = c.reply();
    c.send("QUIT\r\n");
    reply
}

#[test]
fn a_fifo_at_the_key_path_fails_the_start_at_once() {
    if !require_root("the privileged start opening the TLS files") {
        return;
    }
    let (setup, _) = Setup::new();
    let key = setup.key.clone();
    fifo_at(&key);
    let gw = setup.spawn(r#"user = "nobody""#, |_| {});
    let message = refused_start(gw);
    loud(&format!("FIFO at the key path: {message}"));
    for needle in [&format!("{key:?}"), "FIFO", "not a regular file"] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
}

#[test]
fn a_fifo_swapped_in_fails_the_upgrade_and_the_parent_still_stops() {
    if !require_root("the privileged start with upgrades") {
        return;
    }
    let (setup, _) = Setup::new();
    let key = setup.key.clone();
    let mut gw = setup.start();
    assert!(deliver(&gw).starts_with("250"));
    fifo_at(&key);
    let outcome = upgrade(&gw, Signal::SIGHUP);
    loud(&format!("FIFO at an upgrade: {outcome}"));
    assert!(outcome.contains("upgrade failed"), "{outcome}");
    assert!(outcome.contains("FIFO"), "{outcome}");
    assert!(outcome.contains(&key.display().to_string()), "{outcome}");
    // Generation 1 serves on, and counts the failure.
    assert!(deliver(&gw).starts_with("250"), "{}", gw.log_text());
    gw.assert_failed_upgrade_counted();
    assert_eq!(count(&gw, "service started"), 1, "no second child started");
    // The parent is not stuck: SIGTERM stops both within the graces.
    gw.signal(Signal::SIGTERM);
    let status = gw
        .wait_exit(SOON)
        .unwrap_or_else(|| panic!("the parent does not stop:\n{}", gw.log_text()));
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}

#[test]
fn a_key_directory_its_group_can_write_is_refused() {
    if !require_root("the privileged start opening the TLS files") {
        return;
    }
    let (setup, _) = Setup::new();
    let keys = setup.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o775)).unwrap();
    let key = keys.join("key.pem");
    std::fs::rename(&setup.key, &key).unwrap();
    let setup = Setup { key, ..setup };
    let gw = setup.spawn(r#"user = "nobody""#, |_| {});
    let message = refused_start(gw);
    loud(&format!("group-writable key directory: {message}"));
    for needle in [
        format!("{keys:?}"),
        "writable by its group".to_owned(),
        format!("chmod g-w {}", keys.display()),
    ] {
        assert!(message.contains(&needle), "{needle:?} missing: {message}");
    }
}

#[test]
fn certbot_style_links_are_served_and_followed_at_an_upgrade() {
    if !require_root("the privileged start opening the TLS files") || !require_tool("openssl") {
        return;
    }
    // certbot's layout: live/NAME/*.pem are relative links into
    // archive/NAME/*N.pem; live/ and archive/ are 0700, the key 0600.
    let (setup, pem) = Setup::new();
    let le = setup.dir.path().join("letsencrypt");
    let archive = le.join("archive/gw.test");
    let live = le.join("live/gw.test");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    for (dir, mode) in [
        (le.clone(), 0o755),
        (le.join("archive"), 0o700),
        (le.join("live"), 0o700),
        (archive.clone(), 0o755),
        (live.clone(), 0o755),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::rename(&setup.cert, archive.join("fullchain1.pem")).unwrap();
    std::fs::rename(&setup.key, archive.join("privkey1.pem")).unwrap();
    let (cert, key) = (live.join("fullchain.pem"), live.join("privkey.pem"));
    symlink("../../archive/gw.test/fullchain1.pem", &cert).unwrap();
    symlink("../../archive/gw.test/privkey1.pem", &key).unwrap();
    let mut gw = Setup { cert, key, ..setup }.start();
    let smtps = gw.addr("smtps");
    let served = |gw: &Gateway| {
        let t = s_client(smtps, None, "QUIT\n");
        assert!(t.contains("221 2.0.0"), "{t}\n{}", gw.log_text());
        served_pem(&t).unwrap()
    };
    assert_eq!(served(&gw), pem);
    let outcome = upgrade(&gw, Signal::SIGHUP);
    assert!(outcome.contains("upgrade succeeded"), "{outcome}");
    assert_eq!(served(&gw), pem);
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}
