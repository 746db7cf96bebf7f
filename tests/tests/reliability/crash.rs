//! Crash safety: SIGKILL during DATA and during spool writes, 50 times.
//! No partial file is ever visible as a message, temporary files are
//! removed at the next start, and every message acknowledged with 250
//! before the kill is present and intact.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_tests::{json_number, GatewayProcess};
use nix::sys::signal::Signal;

use super::smtp::{body, queued_id, spool_files, spooled, tmp_files, without_trace, Smtp};
use super::{assert_no_panic, figure, gateway, scaled, turn};

const ROUNDS: usize = 50;
/// Background senders per round, each delivering messages in a loop.
const SENDERS: usize = 3;

/// What the round's clients sent: by tag, the size of complete messages
/// (final dot sent), and the acknowledged ones by spool id.
#[derive(Default)]
struct Sent {
    complete: HashMap<String, usize>,
    acked: HashMap<String, (String, usize)>,
}

#[test]
fn sigkill_never_leaves_a_partial_message_and_loses_no_acknowledged_one() {
    let _turn = turn();
    let rounds = scaled(ROUNDS);
    let bin = gateway();
    let dir = lifecycle_tests::temp_dir("crash").expect("temp dir");
    let spool = dir.path().join("spool");
    let mut known: HashMap<String, ()> = HashMap::new();
    let (mut acked_total, mut unacked_stored, mut tmp_left_total, mut removed_total) =
        (0usize, 0usize, 0usize, 0i64);
    let mut kills_with_tmp = 0;
    for round in 0..rounds {
        let tmp_before = tmp_files(&spool);
        let gw = GatewayProcess::builder(&bin)
            .spool_dir(&spool)
            .start()
            .expect("start the gateway");
        // Temporary files of the killed process are removed at start.
        let ready = gw
            .wait_log(Duration::from_secs(5), |l| {
                l.contains(r#""msg":"spool ready""#)
            })
            .expect("spool ready line");
        let removed = json_number(&ready, "stale_temporary_files_removed").unwrap_or(-1);
        assert_eq!(removed, tmp_before as i64, "round {round}: {ready}");
        assert_eq!(tmp_files(&spool), 0, "round {round}: tmp/ after start");
        removed_total += removed;

        let sent = Arc::new(Mutex::new(Sent::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders: Vec<_> = (0..SENDERS)
            .map(|t| {
                let (sent, stop, addr) = (Arc::clone(&sent), Arc::clone(&stop), gw.smtp);
                std::thread::spawn(move || send_loop(addr, round, t, &sent, &stop))
            })
            .collect();
        // Wait for an acknowledged message, so that there is one to lose.
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.lock().unwrap().acked.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            !sent.lock().unwrap().acked.is_empty(),
            "round {round}: nothing acknowledged"
        );

        // The victim transaction: killed mid-DATA (even rounds, while the
        // senders go on) or right after its final dot, while the spool
        // writes it (odd rounds, alone, so that the kill lands in its
        // write).
        let during_data = round % 2 == 0;
        if !during_data {
            stop.store(true, Ordering::SeqCst);
            for s in senders.drain(..) {
                let _ = s.join();
            }
        }
        let (at_kill, kill_now) = mpsc::channel();
        let victim = {
            let (sent, addr) = (Arc::clone(&sent), gw.smtp);
            std::thread::spawn(move || {
                let tag = format!("victim-{round}");
                let size = if during_data { 2 << 20 } else { 8 << 20 };
                let msg = body(&tag, size);
                let Ok(mut c) = Smtp::connect(addr) else {
                    return;
                };
                if c.begin_data().is_err() {
                    return;
                }
                if during_data {
                    let _ = c.send(&msg[..msg.len() / 2]);
                    let _ = at_kill.send(());
                    return;
                }
                if c.send(&msg).is_err() {
                    return;
                }
                sent.lock().unwrap().complete.insert(tag.clone(), size);
                let _ = c.send(b".\r\n");
                let _ = at_kill.send(());
                if let Ok(reply) = c.reply() {
                    if let Some(id) = queued_id(&reply) {
                        sent.lock().unwrap().acked.insert(id, (tag, size));
                    }
                }
            })
        };
        let _ = kill_now.recv_timeout(Duration::from_secs(30));
        if !during_data {
            // Kill while a spool write is under way: as soon as the spool
            // changes (a temporary file, or a new message file, appears;
            // the victim's or a sender's). A spool that wrote messages in
            // place would show a partial message here.
            let messages = spool_files(&spool).len();
            let deadline = Instant::now() + Duration::from_secs(5);
            while tmp_files(&spool) == 0
                && spool_files(&spool).len() == messages
                && Instant::now() < deadline
            {
                std::hint::spin_loop();
            }
        }
        assert_no_panic(&gw);
        let mut gw = gw;
        gw.signal(Signal::SIGKILL).expect("SIGKILL");
        let status = gw.wait_exit(Duration::from_secs(10)).expect("wait");
        assert!(
            status.is_some(),
            "round {round}: SIGKILL did not end the process"
        );
        stop.store(true, Ordering::SeqCst);
        for s in senders {
            let _ = s.join();
        }
        let _ = victim.join();

        // The spool: every acknowledged message intact; every new file a
        // complete message that was sent whole.
        let tmp_left = tmp_files(&spool);
        tmp_left_total += tmp_left;
        if tmp_left > 0 {
            kills_with_tmp += 1;
        }
        let sent = sent.lock().unwrap();
        let files: HashMap<String, std::path::PathBuf> = spool_files(&spool).into_iter().collect();
        for (id, (tag, size)) in &sent.acked {
            let path = files
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {id} ({tag}) is missing"));
            assert_intact(path, tag, *size);
        }
        acked_total += sent.acked.len();
        for (id, path) in &files {
            if known.insert(id.clone(), ()).is_some() || sent.acked.contains_key(id) {
                continue;
            }
            // Stored but not acknowledged (killed before the 250 left):
            // allowed, if complete.
            let content = std::fs::read(path).expect("read message");
            let whole = sent
                .complete
                .iter()
                .any(|(tag, size)| without_trace(&content) == spooled(&body(tag, *size)));
            assert!(
                whole,
                "round {round}: {} is not a complete sent message",
                path.display()
            );
            unacked_stored += 1;
        }
        for id in sent.acked.keys() {
            known.insert(id.clone(), ());
        }
    }
    // A last start cleans up after the last kill.
    let tmp_before = tmp_files(&spool);
    let mut gw = GatewayProcess::builder(&bin)
        .spool_dir(&spool)
        .start()
        .expect("start the gateway");
    let after_clean = tmp_files(&spool);
    let last_removed = gw
        .wait_log(Duration::from_secs(5), |l| {
            l.contains(r#""msg":"spool ready""#)
        })
        .and_then(|l| json_number(&l, "stale_temporary_files_removed"))
        .unwrap_or(-1);
    removed_total += last_removed;
    let stored = spool_files(&spool).len();
    figure(
        "crash_safety",
        &format!(
            "rounds={rounds} (SIGKILL during DATA {} and during spool writes {}); acked={acked_total} \
             all present and intact; stored={stored} (of which complete but unacknowledged \
             {unacked_stored}); kills that left temp files={kills_with_tmp} (files {tmp_left_total}); \
             removed at the next starts={removed_total}; tmp before last start={tmp_before}, after={after_clean}",
            rounds.div_ceil(2),
            rounds / 2
        ),
    );
    assert_eq!(last_removed, tmp_before as i64, "removed at the last start");
    assert_eq!(after_clean, 0, "tmp/ after the last start");
    assert_eq!(
        removed_total, tmp_left_total as i64,
        "every temporary file removed at a start"
    );
    if rounds >= 2 {
        assert!(kills_with_tmp > 0, "no kill hit a spool write");
    }
    assert_eq!(
        stored,
        acked_total + unacked_stored,
        "messages in the spool"
    );
    gw.signal(Signal::SIGTERM).expect("SIGTERM");
    assert!(gw
        .wait_exit(Duration::from_secs(20))
        .expect("wait")
        .is_some());
}

fn assert_intact(path: &Path, tag: &str, size: usize) {
    let content = std::fs::read(path).expect("read message");
    assert!(
        without_trace(&content) == spooled(&body(tag, size)),
        "{} ({tag}) differs from what was sent ({} bytes stored)",
        path.display(),
        content.len()
    );
}

/// Delivers messages on one connection until stopped or cut.
fn send_loop(
    addr: std::net::SocketAddr,
    round: usize,
    t: usize,
    sent: &Mutex<Sent>,
    stop: &AtomicBool,
) {
    let Ok(mut c) = Smtp::connect(addr) else {
        return;
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let tag = format!("r{round}-t{t}-m{n}");
        let size = if n % 3 == 0 { 1 << 20 } else { 2048 };
        let msg = body(&tag, size);
        if c.begin_data().is_err() || c.send(&msg).is_err() {
            return;
        }
        sent.lock().unwrap().complete.insert(tag.clone(), size);
        if c.send(b".\r\n").is_err() {
            return;
        }
        match c.reply() {
            Ok(reply) => match queued_id(&reply) {
                Some(id) => {
                    sent.lock().unwrap().acked.insert(id, (tag, size));
                }
                None => return,
            },
            Err(_) => return,
        }
    }
}
