//! Zero-downtime upgrades end to end (as root; skipped with a printed
//! reason otherwise): the root parent re-execs a copy of the binary kept in
//! a temporary directory (so a test can replace it), on SIGHUP/SIGUSR2.
//! Under load nothing is refused or lost; a rotated certificate is served
//! after the next upgrade; a binary that exits at start-up fails the upgrade
//! cleanly while the old child serves on; an idle IMAP client of the old
//! child is aborted at its abort grace.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::upgrading::{count, load, open, send, upgrade, write_pair, LoadStats, Outcome, Setup};
use common::{occurrences, s_client, sample, served_pem, Gateway, SOON};
use lifecycle_tests::{loud, require_root, require_tool};
use nix::sys::signal::Signal;

#[test]
fn upgrades_under_load_refuse_nothing_and_lose_nothing() {
    if !require_root("the privileged start with upgrades") {
        return;
    }
    const MESSAGES: u64 = 5_000;
    const UPGRADES: usize = 5;
    const THREADS: usize = 8;
    let (setup, _) = Setup::new();
    let mut gw = setup.start();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..THREADS)
        .map(|id| {
            let (stop, stats, accepted) = (stop.clone(), stats.clone(), accepted.clone());
            let addr = gw.smtp;
            std::thread::spawn(move || load(addr, id, stop, stats, accepted))
        })
        .collect();
    // smtp-source as a second, independent client, where installed: runs
    // of 200 messages over 4 sessions, one after another until the load
    // stops, so that its sessions meet every upgrade.
    const SOURCE_RUN: u64 = 200;
    let source = require_tool("smtp-source").then(|| {
        let (stop, addr) = (stop.clone(), gw.smtp);
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new("smtp-source")
                    .args(["-s", "4", "-m", &SOURCE_RUN.to_string()])
                    .args(["-f", "src@example.org", "-t", "sink@example.net"])
                    .arg(addr.to_string())
                    .output()
                    .unwrap();
                runs.push((
                    out.status,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            runs
        })
    });

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for i in 0..UPGRADES {
        // Upgrades spread over the load.
        while stats.accepted.load(Ordering::Relaxed)
            < (i as u64 + 1) * MESSAGES / (UPGRADES as u64 + 2)
        {
            std::thread::sleep(Duration::from_millis(10));
            assert!(started.elapsed() < Duration::from_secs(600), "load stalled");
        }
        // SIGHUP, as `systemctl reload` sends (SIGUSR2: the rotation test).
        let outcome = upgrade(&gw, Signal::SIGHUP);
        assert!(
            outcome.contains("upgrade succeeded"),
            "{outcome}\n{}",
            gw.log_text()
        );
        outcomes.push(outcome);
    }
    while stats.accepted.load(Ordering::Relaxed) < MESSAGES {
        std::thread::sleep(Duration::from_millis(10));
        assert!(started.elapsed() < Duration::from_secs(600), "load stalled");
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let source_runs = source.map(|t| t.join().unwrap());

    let accepted = accepted.lock().unwrap().clone();
    let (refused, reset, other) = (
        stats.refused.load(Ordering::Relaxed),
        stats.reset.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
    );
    // Every acknowledged token is in the spool exactly once.
    let mut found: HashMap<&str, usize> = accepted.iter().map(|t| (t.as_str(), 0)).collect();
    let messages = gw.messages();
    let mut load_files = 0;
    let mut source_files = 0;
    for path in &messages {
        let body = std::fs::read(path).unwrap();
        if let Some(start) = body.windows(11).position(|w| w == b"load-token-") {
            let rest = &body[start..];
            let end = rest.windows(4).position(|w| w == b"-end").unwrap() + 4;
            let token = std::str::from_utf8(&rest[..end]).unwrap();
            if let Some(n) = found.get_mut(token) {
                *n += 1;
            }
            assert_eq!(occurrences(&body, b"load-token-"), 1);
            load_files += 1;
        } else {
            source_files += 1;
        }
    }
    let missing = found.values().filter(|n| **n == 0).count();
    let doubled = found.values().filter(|n| **n > 1).count();
    loud(&format!(
        "upgrade load: {} messages acknowledged over {THREADS} client threads, {UPGRADES} upgrades in {:?}; \
         {} sessions drained by an old generation (421, retried); refused {refused}, reset {reset}, other errors {other}; \
         spool: {load_files} load files, {missing} acknowledged missing, {doubled} stored twice; smtp-source: {source_files} files from {:?} runs of {SOURCE_RUN}, failed runs {:?}",
        accepted.len(),
        started.elapsed(),
        stats.drained.load(Ordering::Relaxed),
        source_runs.as_ref().map(Vec::len),
        source_runs.as_ref().map(|runs| runs
            .iter()
            .filter(|(s, e)| !s.success() || !e.trim().is_empty())
            .collect::<Vec<_>>()),
    ));
    assert!(accepted.len() as u64 >= MESSAGES);
    assert_eq!(
        (refused, reset, other),
        (0, 0, 0),
        "connections refused or reset"
    );
    assert_eq!((missing, doubled), (0, 0));
    // Unacknowledged transactions are not stored either (none were cut off).
    assert_eq!(
        load_files,
        accepted.len(),
        "a message that got no 250 was stored"
    );
    if let Some(runs) = &source_runs {
        for (status, stderr) in runs {
            assert!(status.success(), "smtp-source: {status} {stderr}");
        }
        assert_eq!(
            source_files as u64,
            runs.len() as u64 * SOURCE_RUN,
            "smtp-source messages in the spool"
        );
    }

    // The metrics of the serving (sixth) generation.
    let metrics = gw.metrics();
    assert_eq!(
        sample(&metrics, "lifecycle_upgrades_total", &[("result", "ok")]),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "lifecycle_upgrades_total",
            &[("result", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(6.0),
        "{metrics}"
    );
    assert!(
        outcomes.last().unwrap().contains(r#""from":5"#)
            && outcomes.last().unwrap().contains(r#""to":6"#),
        "{outcomes:?}"
    );

    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    // The reader thread may still hold the last lines after the exit.
    assert!(gw.wait_log_end(SOON), "the log did not end");
    assert_eq!(count(&gw, "old generation exited"), 5, "{}", gw.log_text());
    // Each old generation knew it drained for an upgrade (stopped accepting
    // at once); the last one drained to stop.
    assert_eq!(
        count(&gw, "draining for an upgrade"),
        5,
        "{}",
        gw.log_text()
    );
    assert_eq!(count(&gw, "draining to stop"), 1, "{}", gw.log_text());
}

#[test]
fn rotation_failed_binary_and_idle_imap_of_the_old_child() {
    if !require_root("the privileged start with upgrades") || !require_tool("openssl") {
        return;
    }
    let (setup, first_pem) = Setup::new();
    let (bin, cert, key, dir) = (
        setup.bin.clone(),
        setup.cert.clone(),
        setup.key.clone(),
        setup.dir.path().to_owned(),
    );
    let mut gw = setup.start();
    let smtps = gw.addr("smtps");
    let served = |gw: &Gateway| {
        let t = s_client(smtps, None, "QUIT\n");
        assert!(t.contains("221 2.0.0"), "{t}\n{}", gw.log_text());
        served_pem(&t).unwrap()
    };
    assert_eq!(served(&gw), first_pem);

    // An idle IMAP client of generation 1.
    let idle = TcpStream::connect(gw.imap).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut idle = BufReader::new(idle);
    let mut greeting = String::new();
    idle.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");

    // Upgrade 1: same certificate; generation 1 drains, the idle client is
    // told goodbye during the drain (paced) or aborted at the end of its
    // graces (drain 2 s + abort 1 s), not held.
    let outcome = upgrade(&gw, Signal::SIGHUP);
    assert!(outcome.contains("upgrade succeeded"), "{outcome}");
    let upgraded = Instant::now();
    let mut rest = String::new();
    let read = idle.read_line(&mut rest);
    let waited = upgraded.elapsed();
    loud(&format!(
        "idle IMAP client of the old generation: closed after {waited:?} ({read:?}, {rest:?})"
    ));
    assert!(
        matches!(read, Ok(0)) || read.is_err() || rest.starts_with("* BYE"),
        "{read:?} {rest:?}"
    );
    assert!(waited < Duration::from_secs(15), "held for {waited:?}");
    gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"old generation exited""#) && l.contains(r#""generation":1"#)
    })
    .unwrap_or_else(|| panic!("generation 1 did not exit:\n{}", gw.log_text()));
    assert_eq!(served(&gw), first_pem);

    // Rotate on disk, upgrade 2: the new certificate is served.
    let second_pem = write_pair(&dir, &cert, &key);
    assert_ne!(second_pem, first_pem);
    assert_eq!(served(&gw), first_pem, "not before the upgrade");
    let outcome = upgrade(&gw, Signal::SIGUSR2);
    assert!(outcome.contains("upgrade succeeded"), "{outcome}");
    assert_eq!(
        served(&gw),
        second_pem,
        "the rotated certificate after the upgrade"
    );

    // A new binary that exits at start-up: the upgrade fails, generation 3
    // serves on, and says so.
    let script = dir.join("broken");
    std::fs::write(&script, "#!/bin/sh\necho broken binary >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&script, &bin).unwrap();
    let outcome = upgrade(&gw, Signal::SIGHUP);
    loud(&format!("broken binary: {outcome}"));
    assert!(
        outcome.contains("upgrade failed") && outcome.contains("exited with code 1"),
        "{outcome}"
    );
    assert_eq!(served(&gw), second_pem, "the old child still serves");
    let metrics = gw.assert_failed_upgrade_counted();
    assert_eq!(
        sample(&metrics, "lifecycle_upgrades_total", &[("result", "ok")]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(3.0),
        "{metrics}"
    );

    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}

/// Delivers one message with `token` in its body; panics unless it is
/// acknowledged with 250.
fn deliver(gw: &Gateway, token: &str) {
    let mut session = match open(gw.smtp) {
        Ok(Ok(session)) => session,
        Ok(Err(_)) => panic!("greeted with 421:\n{}", gw.log_text()),
        Err(e) => panic!("cannot connect: {e}\n{}", gw.log_text()),
    };
    match send(&mut session, token) {
        Ok(Outcome::Accepted) => {}
        Ok(Outcome::Drained) => panic!("{token}: 421\n{}", gw.log_text()),
        Err(e) => panic!("{token}: {e}\n{}", gw.log_text()),
    }
}

/// A checkout under root's home (`0700`) as the service user cannot reach
/// it: the root parent opens the binary and the `nobody` child executes
/// that descriptor, at the start and at the upgrade.
#[test]
fn a_binary_in_a_private_directory_starts_serves_and_upgrades_as_nobody() {
    if !require_root("the privileged start as user nobody") {
        return;
    }
    let (mut setup, _) = Setup::new();
    let private = setup.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let bin = private.join("lifecycle-gateway");
    std::fs::rename(&setup.bin, &bin).unwrap();
    setup.bin = bin;
    let mut gw = setup.start();
    deliver(&gw, "private-dir-token-generation-1");

    let outcome = upgrade(&gw, Signal::SIGHUP);
    assert!(
        outcome.contains("upgrade succeeded") && outcome.contains(r#""to":2"#),
        "{outcome}\n{}",
        gw.log_text()
    );
    let metrics = gw.metrics();
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(2.0),
        "{metrics}"
    );
    deliver(&gw, "private-dir-token-generation-2");
    let bodies: Vec<Vec<u8>> = gw
        .messages()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for token in [
        "private-dir-token-generation-1",
        "private-dir-token-generation-2",
    ] {
        let found = bodies
            .iter()
            .filter(|b| occurrences(b, token.as_bytes()) > 0)
            .count();
        assert_eq!(found, 1, "{token} in the spool");
    }

    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}
