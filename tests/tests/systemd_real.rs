//! The deploy units under a real systemd (issue 17): Debian 12's systemd
//! booted with `systemd-nspawn` over a cached root file system (see
//! `lifecycle_tests::Container`), the gateway installed exactly as
//! `deploy/README.md` tells an operator (its `sh` blocks are run as they
//! are, minus the `cargo build` line), then driven with `systemctl` and
//! checked with real clients (the host's `swaks` and `curl` in the
//! container's network namespace), `systemctl show` and the journal.
//!
//! One container per unit, the cases one after the other in it. Skips (or,
//! under `scripts/test` as root, fails) where nspawn cannot boot.
//!
//! Run alone: `cargo test -p lifecycle-tests --test systemd_real -- --nocapture`
//! (builds the root file system first if `<target>/nspawn-root` has none).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifecycle_tests::{
    cached_root, cannot_boot, gateway_bin, json_number, loud, metric_value, skip, workspace_root,
    Container,
};

const PRIVILEGED: &str = "lifecycle-gateway.service";
const ACTIVATED: &str = "lifecycle-gateway-activated.service";
const SOCKETS: [&str; 3] = [
    "lifecycle-gateway-activated-smtp.socket",
    "lifecycle-gateway-activated-imap.socket",
    "lifecycle-gateway-activated-http.socket",
];
/// Bounds a wait for a state; never a measurement.
const PATIENCE: Duration = Duration::from_secs(30);
/// Stops after a reload, per unit and order (`LIFECYCLE_STOP_ROUNDS`
/// overrides it, to chase a rare failure).
const STOP_ROUNDS: usize = 20;
/// How long a stop (of an idle gateway: it exits at once) may take before
/// the test records the unit's processes for the failure message; well
/// below `TimeoutStopSec=` (6 s). Not an assertion.
const LOOK_AT_A_STOP: Duration = Duration::from_secs(2);

/// The `sh` block that follows `heading` in deploy/README.md, without the
/// lines that build with cargo (the test installs the binary it was given).
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("deploy/README.md")).unwrap();
    let at = readme
        .lines()
        .position(|l| l == heading)
        .unwrap_or_else(|| panic!("deploy/README.md has no heading {heading:?}"));
    let lines: Vec<&str> = readme.lines().skip(at).collect();
    let start = lines.iter().position(|l| *l == "```sh").unwrap() + 1;
    let len = lines[start..].iter().position(|l| *l == "```").unwrap();
    lines[start..start + len]
        .iter()
        .filter(|l| !l.starts_with("cargo "))
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which setup of deploy/README.md a rig installs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    /// `lifecycle-gateway.service`: the root parent and its child.
    Privileged,
    /// The same unit with `cap-net-bind-service.conf`: no root, the
    /// gateway hands over to a successor of itself on reload.
    CapDropIn,
    /// `lifecycle-gateway-activated.service` and its sockets.
    Activated,
}

struct Rig {
    c: Container,
    setup: Setup,
    unit: &'static str,
    spool: &'static str,
    _stage: tempfile::TempDir,
}

/// Boots a container with the sources an operator has (deploy/, the
/// release binary at target/release/lifecycle-gateway, a failing binary
/// under /stage) and runs the README's install steps for `unit`.
fn rig(setup: Setup) -> Option<Rig> {
    let unit = if setup == Setup::Activated {
        ACTIVATED
    } else {
        PRIVILEGED
    };
    if let Some(why) = cannot_boot() {
        skip(&format!("no real systemd here: {why}"));
        return None;
    }
    let root = cached_root().unwrap_or_else(|e| panic!("{e}"));
    let bin = gateway_bin().unwrap();
    let stage = lifecycle_tests::temp_dir("stage").unwrap();
    // A binary that fails before it is ready, as a broken upgrade would;
    // as `ctl` (every unit's ExecReload=) it is the good build, so that the
    // reload reaches the process that owns upgrades and reports the failed
    // upgrade.
    let failing = stage.path().join("failing-gateway");
    std::fs::write(
        &failing,
        "#!/bin/sh\n[ \"$1\" = ctl ] && exec /src/target/release/lifecycle-gateway \"$@\"\n\
         echo 'broken build' >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deploy = workspace_root().join("deploy");
    let binds: [(&Path, &str); 3] = [
        (&deploy, "/src/deploy"),
        (&bin, "/src/target/release/lifecycle-gateway"),
        (stage.path(), "/stage"),
    ];
    let booted = Instant::now();
    let c = Container::boot(&root, &binds).unwrap_or_else(|e| panic!("{e}"));
    loud(&format!(
        "{unit}: container booted in {:?} (init pid {})",
        booted.elapsed(),
        c.init_pid()
    ));
    let mut steps = vec![readme_block("## Install")];
    match setup {
        Setup::Privileged => steps.push(readme_block("### Privileged-start mode")),
        Setup::Activated => steps.push(readme_block("### Socket-activated mode")),
        Setup::CapDropIn => {
            // "Install as for the privileged-start mode, but skip the
            // tmpfiles snippet ... and add the drop-in".
            let privileged = readme_block("### Privileged-start mode");
            steps.push(
                privileged
                    .lines()
                    .filter(|l| !l.contains("tmpfiles"))
                    .map(|l| l.replace("enable --now", "enable"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            steps.push(readme_block("### CAP_NET_BIND_SERVICE instead of root"));
        }
    }
    let script = format!("cd /src\n{}\n", steps.join("\n"));
    if let Err(e) = c.sh(&script) {
        panic!("README install steps failed: {e}\n{}", c.journal(""));
    }
    let spool = if unit == PRIVILEGED {
        "/var/lib/lifecycle-gateway/spool"
    } else {
        "/var/lib/private/lifecycle-gateway/spool"
    };
    let rig = Rig {
        c,
        setup,
        unit,
        spool,
        _stage: stage,
    };
    rig.wait_active();
    Some(rig)
}

impl Rig {
    fn show(&self) -> BTreeMap<String, String> {
        self.c
            .show(
                self.unit,
                &[
                    "ActiveState",
                    "SubState",
                    "Result",
                    "ExecMainStatus",
                    "MainPID",
                    "StatusText",
                    "NRestarts",
                ],
            )
            .unwrap()
    }

    fn prop(&self, key: &str) -> String {
        self.show().get(key).cloned().unwrap_or_default()
    }

    fn journal(&self) -> String {
        self.c.journal(self.unit)
    }

    /// Waits until `what` holds, or fails with the unit's state and journal.
    fn wait_for(&self, what: &str, mut ok: impl FnMut(&Rig) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "{}: {what} did not happen: {:?}\n{}",
                self.unit,
                self.show(),
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_active(&self) {
        self.wait_for("active (running) with a main pid", |r| {
            let s = r.show();
            s["SubState"] == "running" && s["MainPID"] != "0"
        });
    }

    /// Starts the unit as an operator would (for the activated one: its
    /// sockets, then the service).
    fn start(&self) {
        let units: Vec<&str> = if self.unit == ACTIVATED {
            SOCKETS.iter().copied().chain([ACTIVATED]).collect()
        } else {
            vec![PRIVILEGED]
        };
        // The stop-after-reload rounds start the units more often than
        // systemd's default start limit (5 in 10 s) allows: reset it.
        let units = units.join(" ");
        let (ok, out) = self.c.sh_status(&format!(
            "systemctl reset-failed {units}; systemctl start {units}"
        ));
        assert!(ok, "{out}\n{}", self.journal());
        self.wait_active();
    }

    fn metrics(&self) -> Option<String> {
        let out = self
            .c
            .net_command("curl")
            .args(["-fsS", "--max-time", "5", "http://127.0.0.1:9090/metrics"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn generation(&self) -> Option<u64> {
        self.metrics()
            .and_then(|m| metric_value(&m, "lifecycle_generation", &[]))
            .map(|g| g as u64)
    }

    /// Delivers one message with swaks; true when it was acknowledged (250
    /// after DATA).
    fn deliver(&self, body: &str) -> bool {
        let out = self
            .c
            .net_command("swaks")
            .args([
                "--server",
                "127.0.0.1:25",
                "--from",
                "sender@example.org",
                "--to",
                "test@example.org",
                "--body",
                body,
                "--timeout",
                "10",
            ])
            .output()
            .unwrap();
        out.status.success()
    }

    fn spool_has(&self, body: &str) -> bool {
        self.c
            .sh_status(&format!("grep -rlF -- '{body}' {}", self.spool))
            .0
    }

    /// Installs `source` (a path inside the container) as the binary, the
    /// README's way (install to .new, atomic mv), then `systemctl reload`.
    fn reload_with(&self, source: &str) -> (bool, String) {
        self.c
            .sh(&format!(
                "install -m 0755 {source} /usr/local/bin/lifecycle-gateway.new\n\
             mv -f /usr/local/bin/lifecycle-gateway.new /usr/local/bin/lifecycle-gateway"
            ))
            .unwrap();
        self.c.sh_status(&format!("systemctl reload {}", self.unit))
    }

    /// Asserts the sandbox never killed a process: no SIGSYS in the journal.
    fn assert_no_seccomp_kill(&self) {
        let journal = self.journal();
        assert!(
            !journal.contains("status=31/SYS") && !journal.contains("signal=SYS"),
            "SystemCallFilter= killed a process:\n{journal}"
        );
    }
}

/// Connects to port 25 in the container's network namespace in a loop
/// and reads the greeting; counts greetings and failures.
struct Looper {
    stop: Arc<AtomicBool>,
    greeted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Looper {
    fn start(c: &Container) -> Looper {
        let netns = std::fs::File::open(format!("/proc/{}/ns/net", c.init_pid())).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let greeted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, g, f) = (stop.clone(), greeted.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // This thread only: the test's other threads stay on the host.
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let greeting = TcpStream::connect(("127.0.0.1", 25)).and_then(|stream| {
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut line = String::new();
                    BufReader::new(stream).read_line(&mut line)?;
                    Ok(line)
                });
                match greeting {
                    Ok(line) if line.starts_with("220 ") => {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        });
        Looper {
            stop,
            greeted,
            failed,
            thread: Some(thread),
        }
    }

    fn greeted(&self) -> u64 {
        self.greeted.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().unwrap();
        (
            self.greeted.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn start_and_deliver(r: &Rig) {
    assert!(r.deliver("first message"), "{}", r.journal());
    assert!(r.spool_has("first message"), "not in {}", r.spool);
    r.wait_for("a STATUS= line", |r| !r.prop("StatusText").is_empty());
}

fn reload_good(r: &Rig) {
    let before = r.generation().expect("lifecycle_generation on /metrics");
    let looper = Looper::start(&r.c);
    r.wait_for("the looping client being greeted", |_| looper.greeted() > 5);
    let (ok, out) = r.reload_with("/src/target/release/lifecycle-gateway");
    assert!(ok, "systemctl reload: {out}");
    r.wait_for("the next generation serving", |r| {
        r.generation() == Some(before + 1)
    });
    let seen = looper.greeted();
    r.wait_for("more greetings after the reload", |_| {
        looper.greeted() > seen + 5
    });
    let (greeted, failed, errors) = looper.finish();
    loud(&format!(
        "{}: reload {before} -> {}: {greeted} greetings, {failed} failures",
        r.unit,
        before + 1
    ));
    assert_eq!(failed, 0, "refused or broken during the reload: {errors:?}");
    assert!(r.deliver("after a good reload"), "{}", r.journal());
    let journal = r.journal();
    if r.setup != Setup::Privileged {
        // The old process logs under the generation its successor names as
        // the one it took over from (it used to log generation 0).
        let line = journal
            .lines()
            .find(|l| l.contains(r#""msg":"upgrade succeeded""#))
            .unwrap_or_else(|| panic!("no upgrade succeeded line:\n{journal}"));
        let (from, to) = (json_number(line, "from"), json_number(line, "to"));
        assert_eq!(json_number(line, "generation"), from, "{line}");
        assert_eq!(
            (from, to),
            (Some(before as i64), Some(before as i64 + 1)),
            "{line}"
        );
        assert!(
            journal.contains("main process announced: the predecessor exited"),
            "the successor did not name itself:\n{journal}"
        );
        assert!(
            !journal.contains("which is not our child")
                && !journal.contains("reception only permitted"),
            "{journal}"
        );
    } else {
        assert!(journal.contains("upgrade succeeded"), "{journal}");
    }
    r.wait_active();
}

fn reload_failing(r: &Rig) {
    let before = r.generation().expect("lifecycle_generation on /metrics");
    let pid = r.prop("MainPID");
    let (reload_ok, out) = r.reload_with("/stage/failing-gateway");
    // Every setup's ExecReload= is `ctl upgrade --wait` (served by the
    // root parent, or by the serving process itself without one): the
    // failed upgrade fails `systemctl reload`, with ctl's reason in the
    // journal.
    loud(&format!(
        "{}: reload with a failing binary: systemctl reload succeeded={reload_ok} {}",
        r.unit,
        out.trim()
    ));
    assert!(!reload_ok, "systemctl reload must fail: {out}");
    r.wait_for("ctl's reason in the journal", |r| {
        let journal = r.journal();
        journal.contains("exited with code 3") && journal.contains("keeps serving")
    });
    r.wait_for("the failed upgrade in the journal", |r| {
        r.journal().contains("upgrade failed")
    });
    assert_eq!(r.generation(), Some(before), "the old generation serves");
    assert_eq!(r.prop("MainPID"), pid, "the main process stays");
    assert!(r.deliver("after a failed reload"), "{}", r.journal());
    r.wait_active();
    // Put the good binary back for the next cases.
    r.c.sh(
        "install -m 0755 /src/target/release/lifecycle-gateway /usr/local/bin/lifecycle-gateway",
    )
    .unwrap();
}

/// Stops the unit right after a reload `STOP_ROUNDS` times per order of
/// units on the command line: `Result=success` every time.
fn stop_after_reload(r: &Rig) {
    let orders: Vec<Vec<&str>> = if r.unit == ACTIVATED {
        vec![
            [ACTIVATED].into_iter().chain(SOCKETS).collect(),
            SOCKETS.into_iter().chain([ACTIVATED]).collect(),
        ]
    } else {
        vec![vec![PRIVILEGED]]
    };
    // systemd's debug lines for the unit ("Main process exited", "Control
    // group is empty", state changes) go to its journal, which a failure
    // prints.
    r.c.sh("systemd-analyze set-log-level debug").unwrap();
    for order in &orders {
        let rounds: usize = std::env::var("LIFECYCLE_STOP_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(STOP_ROUNDS);
        for round in 0..rounds {
            let before = r.generation().expect("lifecycle_generation");
            let old = r.prop("MainPID");
            let (ok, out) = r.c.sh_status(&format!("systemctl reload {}", r.unit));
            assert!(ok, "{out}");
            // (A failed upgrade may have used a number: greater, not + 1.)
            r.wait_for("a newer generation serving", |r| {
                r.generation().is_some_and(|g| g > before)
            });
            if r.setup != Setup::Privileged {
                // The old process has drained and exited: the state in
                // which systemd used to SIGKILL the successor.
                r.wait_for("the old process gone", |r| {
                    !r.c.sh_status(&format!("kill -0 {old}")).0
                });
            }
            // A stop that hangs is looked at while it hangs (who is still
            // in the unit's cgroup, and in which state), not after systemd
            // gave up on it. (A blocking `systemctl stop`, as an operator
            // types it: polling the state of a --no-block stop and starting
            // at once made starts fail with 219/CGROUP here.)
            let mut hanging = None;
            let (ok, out) = std::thread::scope(|scope| {
                let stop = scope.spawn(|| {
                    r.c.sh_status(&format!("systemctl stop {}", order.join(" ")))
                });
                let begun = Instant::now();
                while !stop.is_finished() {
                    if hanging.is_none() && begun.elapsed() > LOOK_AT_A_STOP {
                        hanging = Some(r.c.diagnose(r.unit));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                stop.join().expect("the stop thread panicked")
            });
            assert!(ok, "{out}");
            let s = r.show();
            assert_eq!(
                (s["Result"].as_str(), s["ExecMainStatus"].as_str()),
                ("success", "0"),
                "round {round}, stop {order:?}: {s:?}\n{}\n== while the stop hung:\n{}",
                r.journal(),
                hanging.as_deref().unwrap_or("(it did not hang)")
            );
            assert_eq!(s["ActiveState"], "inactive", "{s:?}");
            r.start();
        }
    }
    r.c.sh("systemd-analyze set-log-level info").unwrap();
    assert!(
        !r.journal().contains("signal SIGKILL"),
        "something was killed:\n{}",
        r.journal()
    );
}

fn kill_restarts(r: &Rig) {
    let restarts: u64 = r.prop("NRestarts").parse().unwrap();
    let acked: Vec<String> = (0..5)
        .map(|i| format!("acked before the kill {i}"))
        .filter(|b| r.deliver(b))
        .collect();
    assert_eq!(acked.len(), 5, "{}", r.journal());
    let old = r.prop("MainPID");
    let (ok, out) =
        r.c.sh_status(&format!("systemctl kill -s SIGKILL {}", r.unit));
    assert!(ok, "{out}");
    r.wait_for("a restart", |r| {
        let s = r.show();
        s["NRestarts"].parse::<u64>().unwrap_or(0) == restarts + 1
            && s["SubState"] == "running"
            && s["MainPID"] != old
    });
    for body in &acked {
        assert!(r.spool_has(body), "acknowledged but lost: {body}");
    }
    assert!(r.deliver("after the restart"), "{}", r.journal());
}

fn sandbox_holds(r: &Rig) {
    r.c.sh("echo secret > /root/secret").unwrap();
    // The serving process: the main one, or the privileged parent's child.
    let main = r.prop("MainPID");
    let serving = if r.setup == Setup::Privileged {
        r.c.sh(&format!(
            "grep -l '^PPid:[[:space:]]*{main}$' /proc/[0-9]*/status | cut -d/ -f3"
        ))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the parent has a child")
        .to_owned()
    } else {
        main
    };
    let status = r.c.sh(&format!("cat /proc/{serving}/status")).unwrap();
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        // The drop-in's process holds CAP_NET_BIND_SERVICE (bit 10) and
        // nothing else; the others none at all. The privileged child's
        // bounding set is the parent's (setuid cleared the rest).
        let expected = if r.setup == Setup::CapDropIn {
            "0000000000000400"
        } else {
            "0000000000000000"
        };
        if key != "CapBnd:" || r.setup == Setup::Activated {
            assert!(
                line.ends_with(expected),
                "serving process capabilities: {line}, expected {expected}"
            );
        }
    }
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_owned();
    assert_ne!(uid, "0", "serving as root");
    // Its view of the file system, as its user: /root is not readable.
    let (read, out) = r.c.sh_status(&format!(
        "nsenter -t {serving} -m -S {uid} -G {uid} -- cat /root/secret"
    ));
    assert!(!read, "the serving process read /root: {out}");
    r.assert_no_seccomp_kill();
}

/// An SMTP client in the container's network namespace (connected from a
/// thread that entered it).
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    fn connect(c: &Container) -> Smtp {
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
    fn reply(&mut self) -> String {
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

    fn send(&mut self, text: &str) {
        use std::io::Write;
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }
}

/// `systemctl stop` with a transaction in the middle of DATA and an idle
/// session: the transaction finishes (250) within the drain grace, the next
/// command of both gets 421, the message is spooled, `Result=success`.
fn stop_with_open_sessions(r: &Rig) {
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
fn watchdog_under_load(r: &Rig) {
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

/// One case, run on a booted rig.
type Case = fn(&Rig);

/// One booted container at a time. With three at once, the kernel here
/// (hybrid cgroups, lazy RCU) sometimes keeps a stopped gateway's exited
/// threads in the unit's cgroup for longer than `TimeoutStopSec=`, and
/// systemd, which with `ExitType=cgroup` waits for "control group empty",
/// ends the stop with `Result=timeout` though no process is left (see the
/// known failure described in deploy/README.md). One at a time, 300
/// stop-after-reload rounds passed twice in a row.
static ONE_CONTAINER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_cases(setup: Setup) {
    let _one = ONE_CONTAINER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(r) = rig(setup) else {
        return;
    };
    let cases: [(&str, Case); 8] = [
        ("start and deliver", start_and_deliver),
        ("stop with open sessions", stop_with_open_sessions),
        ("reload with a good binary", reload_good),
        ("reload with a failing binary", reload_failing),
        ("stop right after a reload", stop_after_reload),
        ("watchdog under load", watchdog_under_load),
        ("SIGKILL restarts", kill_restarts),
        ("sandbox", sandbox_holds),
    ];
    for (name, case) in cases {
        let t = Instant::now();
        case(&r);
        loud(&format!("{setup:?}: {name}: ok ({:?})", t.elapsed()));
    }
    r.assert_no_seccomp_kill();
}

#[test]
fn privileged_start_unit_under_systemd() {
    run_cases(Setup::Privileged);
}

#[test]
fn cap_net_bind_service_drop_in_under_systemd() {
    run_cases(Setup::CapDropIn);
}

#[test]
fn socket_activated_unit_under_systemd() {
    run_cases(Setup::Activated);
}
