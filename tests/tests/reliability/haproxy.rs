//! A real HAProxy in the loop (issue 15): two gateway instances behind
//! Debian's `haproxy` (`mode tcp`, `send-proxy-v2`, `option httpchk GET
//! /readyz`), a load client sending one message per connection from
//! 127.0.0.2 … 127.0.0.9 for the whole test, while both instances are
//! rolled (SIGTERM, exit, start again) and then upgraded in place (SIGHUP).
//! Not one client may notice: no failed connection, no 421, no reset, no
//! timeout; every acknowledged message is stored exactly once across the
//! two spools, and its `Received:` line names the client's real address.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifecycle_tests::{ChildGuard, GatewayProcess};
use nix::sys::signal::Signal;

use super::smtp::spool_files;
use super::{assert_no_panic, figure, gateway, kv, turn, LoadClient};

/// HAProxy's check interval and fall count: a server answering 503 on
/// /readyz is out of rotation after about `INTER × FALL`.
const INTER_MS: u64 = 200;
const FALL: u64 = 2;
/// Longer than INTER × FALL (plus a check's own time), so that the
/// balancer stops sending before the instance stops accepting work.
const LAME_DUCK: &str = "2s";
const SOURCES: &str =
    "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9";
const CONCURRENCY: usize = 8;
const WAIT: Duration = Duration::from_secs(60);

/// One gateway instance behind the balancer: fixed ports (a restarted
/// instance comes back where HAProxy expects it) and its own spool.
struct Instance {
    name: &'static str,
    smtp_port: u16,
    http_port: u16,
    spool: tempfile::TempDir,
    process: Option<GatewayProcess>,
    /// Processes of this instance that took over by SIGHUP (pid), still
    /// serving or draining; they write to `process`'s log.
    successors: Vec<i32>,
    /// Logs of generations that exited, kept for the final checks.
    retired: Vec<GatewayProcess>,
}

impl Instance {
    fn new(name: &'static str) -> Instance {
        Instance {
            name,
            smtp_port: lifecycle_tests::free_port().expect("port"),
            http_port: lifecycle_tests::free_port().expect("port"),
            spool: lifecycle_tests::temp_dir("lb-spool").expect("spool dir"),
            process: None,
            successors: Vec::new(),
            retired: Vec::new(),
        }
    }

    fn start(&mut self) {
        let gw = GatewayProcess::builder(gateway())
            .lame_duck(LAME_DUCK)
            .drain_grace("5s")
            .abort_grace("1s")
            .spool_dir(self.spool.path().join("spool"))
            .smtp_listener(
                &format!("127.0.0.1:{}", self.smtp_port),
                "proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
            )
            .http_address(&format!("127.0.0.1:{}", self.http_port))
            .start()
            .unwrap_or_else(|e| panic!("start instance {}: {e}", self.name));
        self.process = Some(gw);
    }

    fn gw(&mut self) -> &mut GatewayProcess {
        self.process.as_mut().expect("instance running")
    }

    /// SIGTERM, wait for a clean exit, start again.
    fn roll(&mut self) {
        let name = self.name;
        let gw = self.gw();
        gw.signal(Signal::SIGTERM).expect("SIGTERM");
        let status = gw
            .wait_exit(WAIT)
            .expect("wait")
            .expect("exit after SIGTERM");
        assert_eq!(
            status.code(),
            Some(0),
            "instance {} after SIGTERM:\n{}",
            name,
            gw.log_tail(30)
        );
        assert!(
            gw.wait_log_end(WAIT),
            "instance {}: a process still holds its log",
            name
        );
        let old = self.process.take().expect("instance");
        self.retired.push(old);
        self.start();
    }

    /// SIGHUP: a successor takes over the same sockets; the old process
    /// drains and exits.
    fn upgrade(&mut self) {
        let name = self.name;
        let gw = self.gw();
        let from = gw.log_len();
        gw.signal(Signal::SIGHUP).expect("SIGHUP");
        let line = gw
            .wait_log(WAIT, |l| l.contains(r#""msg":"upgrade succeeded""#))
            .unwrap_or_else(|| panic!("instance {name}: no upgrade:\n{}", gw.log_tail(30)));
        assert!(gw.log_len() > from);
        let child = lifecycle_tests::json_number(&line, "child").expect("successor pid") as i32;
        let status = gw
            .wait_exit(WAIT)
            .expect("wait")
            .expect("the old generation exits");
        assert_eq!(
            status.code(),
            Some(0),
            "instance {name}, old generation:\n{}",
            gw.log_tail(30)
        );
        self.successors.push(child);
    }

    /// Stops the successors (SIGTERM) and waits until nothing writes the
    /// log any more.
    fn stop(&mut self) {
        for pid in &self.successors {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGTERM);
        }
        if let Some(gw) = self.process.as_mut() {
            if self.successors.is_empty() {
                gw.signal(Signal::SIGTERM).expect("SIGTERM");
                let _ = gw.wait_exit(WAIT);
            }
            assert!(
                gw.wait_log_end(WAIT),
                "instance {}: still running",
                self.name
            );
        }
        if let Some(gw) = self.process.take() {
            self.retired.push(gw);
        }
    }
}

/// HAProxy, started in the foreground with a generated configuration.
struct Haproxy {
    _child: ChildGuard,
    socket: PathBuf,
    front: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(instances: &[&Instance]) -> Haproxy {
        let dir = lifecycle_tests::temp_dir("haproxy").expect("dir");
        let front = SocketAddr::from(([127, 0, 0, 1], lifecycle_tests::free_port().expect("port")));
        let socket = dir.path().join("admin.sock");
        let servers: String = instances
            .iter()
            .map(|i| {
                format!(
                    "    server {} 127.0.0.1:{} check port {} inter {INTER_MS}ms fall {FALL} rise 1 send-proxy-v2\n",
                    i.name, i.smtp_port, i.http_port
                )
            })
            .collect();
        let config = format!(
            "global\n    maxconn 2000\n    stats socket {socket} level admin\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    retries 3\n    option redispatch\n\
             frontend smtp\n    bind {front}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n{servers}",
            socket = socket.display(),
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).expect("write haproxy.cfg");
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c rejects the generated config:\n{config}\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = ChildGuard::spawn(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .expect("start haproxy");
        let haproxy = Haproxy {
            _child: child,
            socket,
            front,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        while std::os::unix::net::UnixStream::connect(&haproxy.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy's admin socket never came up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    /// The status (`UP`, `DOWN`, ...) of each server, from `show stat`.
    fn statuses(&self) -> HashMap<String, String> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).expect("admin socket");
        s.write_all(b"show stat\n").expect("show stat");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read stat");
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).expect("stat column");
        let (sv, st) = (col("svname"), col("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| (f[sv].to_owned(), f[st].to_owned()))
            .collect()
    }

    /// Waits until HAProxy's health check has `server` UP.
    fn wait_up(&self, server: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let statuses = self.statuses();
            if statuses.get(server).is_some_and(|s| s == "UP") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} never UP in haproxy: {statuses:?}"
            );
            std::thread::sleep(Duration::from_millis(INTER_MS / 2));
        }
    }
}

/// The client's ok count so far.
fn delivered(client: &mut LoadClient) -> u64 {
    kv(&client.ask("count", "count ", WAIT), "ok")
}

/// Waits until the client has delivered more than `after` messages (load
/// flows through the balancer now).
fn wait_progress(client: &mut LoadClient, after: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = delivered(client);
        if n > after {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no message got through for {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `X-Lb-Tag` and the address in the `Received:` line of each message in
/// `spool`.
fn stored(spool: &Path) -> Vec<(String, String)> {
    spool_files(spool)
        .into_iter()
        .map(|(_, path)| {
            let text = std::fs::read_to_string(&path).expect("read message");
            let tag = text
                .lines()
                .find_map(|l| l.strip_prefix("X-Lb-Tag: "))
                .unwrap_or_else(|| panic!("{} has no tag:\n{text}", path.display()))
                .to_owned();
            let received = text
                .lines()
                .find_map(|l| l.strip_prefix("Received: from "))
                .and_then(|l| Some(l.split_once("([")?.1.split_once("])")?.0.to_owned()))
                .unwrap_or_else(|| panic!("{} has no Received: address:\n{text}", path.display()));
            (tag, received)
        })
        .collect()
}

#[test]
fn haproxy_rolls_and_upgrades_without_losing_a_client() {
    let _turn = turn();
    if !lifecycle_tests::require_tool("haproxy") {
        return;
    }
    let mut a = Instance::new("a");
    let mut b = Instance::new("b");
    a.start();
    b.start();
    let haproxy = Haproxy::start(&[&a, &b]);
    haproxy.wait_up("a");
    haproxy.wait_up("b");

    let acked_dir = lifecycle_tests::temp_dir("lb-client").expect("dir");
    let acked_path = acked_dir.path().join("acked");
    let mut client = LoadClient::spawn(&[
        "lb".to_owned(),
        haproxy.front.to_string(),
        SOURCES.to_owned(),
        CONCURRENCY.to_string(),
        acked_path.display().to_string(),
    ]);
    client.expect("started", WAIT);
    let mut n = wait_progress(&mut client, 0);

    let steps: [(&str, usize); 4] = [("roll", 0), ("roll", 1), ("upgrade", 0), ("upgrade", 1)];
    for (step, which) in steps {
        let instance = if which == 0 { &mut a } else { &mut b };
        match step {
            "roll" => instance.roll(),
            _ => instance.upgrade(),
        }
        haproxy.wait_up(instance.name);
        n = wait_progress(&mut client, n);
        figure(
            "haproxy",
            &format!("{step} {}: done, {n} delivered so far", instance.name),
        );
    }

    let result = client.ask("stop", "result ", WAIT);
    client.finish();
    figure("haproxy", &result);
    a.stop();
    b.stop();
    for gw in a.retired.iter().chain(&b.retired) {
        assert_no_panic(gw);
    }
    assert_eq!(
        kv(&result, "failed"),
        0,
        "failed client transactions: {result}"
    );
    let ok = kv(&result, "ok");
    assert!(ok > 0, "{result}");

    let acked: Vec<(String, String)> = std::fs::read_to_string(&acked_path)
        .expect("acked file")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(t, s)| (t.to_owned(), s.to_owned())))
        .collect();
    assert_eq!(acked.len() as u64, ok, "acked file vs the client's count");
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    let (mut in_a, mut in_b) = (0, 0);
    for (spool, count) in [
        (a.spool.path().join("spool"), &mut in_a),
        (b.spool.path().join("spool"), &mut in_b),
    ] {
        for (tag, received) in stored(&spool) {
            *count += 1;
            found.entry(tag).or_default().push(received);
        }
    }
    let sources: Vec<IpAddr> = SOURCES.split(',').map(|s| s.parse().expect("ip")).collect();
    let mut by_source: HashMap<String, u64> = HashMap::new();
    for (tag, source) in &acked {
        let got = found.get(tag).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            got.len(),
            1,
            "{tag} (acknowledged) is stored {} times",
            got.len()
        );
        assert_eq!(
            &got[0], source,
            "{tag}: Received: names {} but the client was {source}",
            got[0]
        );
        *by_source.entry(source.clone()).or_default() += 1;
    }
    assert_eq!(
        found.len(),
        acked.len(),
        "stored messages that were never acknowledged"
    );
    assert_eq!(
        by_source.len(),
        sources.len(),
        "every source address was used: {by_source:?}"
    );
    figure(
        "haproxy",
        &format!(
            "acknowledged={} stored: a={in_a} b={in_b}; failed=0; by source: {by_source:?}",
            acked.len()
        ),
    );
}
