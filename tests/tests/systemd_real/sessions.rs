//! Open sessions during a stop, and the watchdog under load.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use lifecycle_tests::{loud, Container};

use crate::looper::Looper;
use crate::rig::*;

/// An SMTP client in the container's network namespace (connected from a
/// thread that entered it).
pub(crate) struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    pub(crate) fn connect(c: &Container) -> Smtp {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", c.init_pid())).unwrap();
        // Connect from a short-lived thread in the container's namespace;
        // the socket stays usable from any thread.
        let stream = std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpStream::connect(("127.0.0.1", 25)).unwrap()
        })
        .join()
        .unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut smtp = Smtp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = smtp.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        smtp
    }

    /// The last line of the next reply ("" at end of input).
    pub(crate) fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return line;
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    }

    pub(crate) fn send(&mut self, text: &str) {
        use std::io::Write;
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    pub(crate) fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }
}

/// `systemctl stop` with a transaction in the middle of DATA and an idle
/// session: the transaction finishes (250) within the drain grace, the next
/// command of both gets 421, the message is spooled, `Result=success`.
pub(crate) fn stop_with_open_sessions(r: &Rig) {
    let mut busy = Smtp::connect(&r.c);
    let mut idle = Smtp::connect(&r.c);
    assert!(busy.command("EHLO client.example.org").starts_with("250"));
    assert!(idle.command("EHLO idle.example.org").starts_with("250"));
    assert!(busy.command("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(busy.command("RCPT TO:<b@example.org>").starts_with("250"));
    assert!(busy.command("DATA").starts_with("354"));
    busy.send("Subject: open at stop\r\n\r\nwritten while the unit stops\r\n");
    let drains = r.journal().matches("draining to stop").count();
    let mut stop =
        r.c.command("systemctl", &["stop", r.unit])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
    r.wait_for("the stop to begin (draining)", |r| {
        r.journal().matches("draining to stop").count() > drains
    });
    busy.send(".\r\n");
    let done = busy.reply();
    assert!(done.starts_with("250"), "the open transaction: {done}");
    let next = busy.command("MAIL FROM:<a@example.org>");
    assert!(next.starts_with("421"), "after the drain began: {next}");
    let next = idle.command("MAIL FROM:<a@example.org>");
    assert!(
        next.starts_with("421") || next.is_empty(),
        "idle session: {next:?}"
    );
    let status = stop.wait().unwrap();
    assert!(status.success(), "systemctl stop: {status}");
    let s = r.show();
    assert_eq!(
        (s["Result"].as_str(), s["ExecMainStatus"].as_str()),
        ("success", "0"),
        "{s:?}\n{}",
        r.journal()
    );
    assert!(r.spool_has("written while the unit stops"));
    r.start();
}

/// The watchdog does not fire under load. Only the activated unit has
/// `WatchdogSec=` (the privileged parent would have to relay its child's
/// liveness); a drop-in lowers it from 30 s to 2 s so that the load spans
/// several intervals, as `systemctl edit` would.
pub(crate) fn watchdog_under_load(r: &Rig) {
    if r.unit != ACTIVATED {
        return;
    }
    let dropin = format!("/etc/systemd/system/{ACTIVATED}.d/watchdog.conf");
    r.c.sh(&format!(
        "mkdir -p $(dirname {dropin}) && printf '[Service]\\nWatchdogSec=2s\\n' > {dropin} \
         && systemctl daemon-reload && systemctl restart {ACTIVATED}"
    ))
    .unwrap();
    r.wait_active();
    let usec = r.c.show(ACTIVATED, &["WatchdogUSec"]).unwrap();
    assert_eq!(usec["WatchdogUSec"], "2s", "{usec:?}");
    let (pid, restarts) = (r.prop("MainPID"), r.prop("NRestarts"));
    let looper = Looper::start(&r.c);
    // Load for four watchdog intervals: greetings in a loop plus deliveries.
    let load = Instant::now();
    let mut delivered = 0;
    while load.elapsed() < Duration::from_secs(8) {
        assert!(r.deliver(&format!("under watchdog load {delivered}")));
        delivered += 1;
    }
    let (greeted, failed, errors) = looper.finish();
    assert_eq!(failed, 0, "{errors:?}");
    loud(&format!(
        "{ACTIVATED}: watchdog 2s, 8s of load: {greeted} greetings, {delivered} messages"
    ));
    let s = r.show();
    assert_eq!(
        (s["MainPID"].clone(), s["NRestarts"].clone()),
        (pid, restarts),
        "{s:?}"
    );
    let journal = r.journal();
    assert!(!journal.contains("Watchdog timeout"), "{journal}");
    r.c.sh(&format!(
        "rm {dropin} && systemctl daemon-reload && systemctl restart {ACTIVATED}"
    ))
    .unwrap();
    r.wait_active();
}
