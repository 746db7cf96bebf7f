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

/// The watchdog fires when the serving process hangs, and does not fire
/// under load. Both units have `WatchdogSec=30s`; a drop-in lowers it to
/// 2 s, as `systemctl edit` would, so that the load spans several
/// intervals. In the privileged start the parent pings only after the
/// serving child answered its control endpoint, so stopping the child
/// (SIGSTOP) must end the unit with a watchdog timeout just as stopping the
/// socket-activated gateway itself does; `Restart=on-failure` then brings
/// it back. The hang comes first: the load logs some 200,000 connection
/// lines, after which journald's rate limit would drop the parent's line
/// that says why it withheld the pings.
pub(crate) fn watchdog_under_load(r: &Rig) {
    let unit = r.unit;
    let dropin = format!("/etc/systemd/system/{unit}.d/watchdog.conf");
    r.c.sh(&format!(
        "mkdir -p $(dirname {dropin}) && printf '[Service]\\nWatchdogSec=2s\\n' > {dropin} \
         && systemctl daemon-reload && systemctl restart {unit}"
    ))
    .unwrap();
    r.wait_active();
    let usec = r.c.show(unit, &["WatchdogUSec"]).unwrap();
    assert_eq!(usec["WatchdogUSec"], "2s", "{usec:?}");

    // The serving process hangs: no more pings, systemd ends and restarts.
    let (pid, restarts) = (r.prop("MainPID"), r.prop("NRestarts"));
    let restarts: u64 = restarts.parse().unwrap();
    let serving = r.serving_pid();
    let hung = Instant::now();
    r.c.sh(&format!("kill -STOP {serving}")).unwrap();
    r.wait_for("a restart by the watchdog", |r| {
        let s = r.show();
        s["NRestarts"].parse::<u64>().unwrap_or(0) == restarts + 1
            && s["SubState"] == "running"
            && s["MainPID"] != pid
    });
    loud(&format!(
        "{unit}: serving pid {serving} stopped, watchdog restart after {:?}",
        hung.elapsed()
    ));
    // The lines reach the journal behind the restart the test saw.
    r.wait_for("the watchdog timeout in the journal", |r| {
        r.journal().contains("Watchdog timeout")
    });
    if r.setup == Setup::Privileged {
        r.wait_for("the parent's reason for the withheld pings", |r| {
            r.journal().contains("watchdog: ping for generation")
        });
    }
    assert!(r.deliver("after the watchdog restart"), "{}", r.journal());

    // Load for four watchdog intervals: greetings in a loop plus deliveries.
    let (pid, restarts) = (r.prop("MainPID"), r.prop("NRestarts"));
    let looper = Looper::start(&r.c);
    let load = Instant::now();
    let mut delivered = 0;
    while load.elapsed() < Duration::from_secs(8) {
        assert!(r.deliver(&format!("under watchdog load {delivered}")));
        delivered += 1;
    }
    let (greeted, failed, errors) = looper.finish();
    assert_eq!(failed, 0, "{errors:?}");
    loud(&format!(
        "{unit}: watchdog 2s, 8s of load: {greeted} greetings, {delivered} messages"
    ));
    let s = r.show();
    assert_eq!(
        (s["MainPID"].clone(), s["NRestarts"].clone()),
        (pid, restarts),
        "{s:?}"
    );
    let timeouts = r.journal().matches("Watchdog timeout").count();
    assert_eq!(timeouts, 1, "only the hang may time out:\n{}", r.journal());
    r.c.sh(&format!(
        "rm {dropin} && systemctl daemon-reload && systemctl restart {unit}"
    ))
    .unwrap();
    r.wait_active();
}
