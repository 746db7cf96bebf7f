//! The privileged start end to end (as root; skipped with a printed reason
//! otherwise): a root parent binds the ports and opens the TLS files, the
//! service runs as `nobody` with nothing of root left, serves plain SMTP,
//! STARTTLS, SMTPS and IMAPS with a key only root can read, and the two
//! processes live and die together.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{number, s_client, served_pem, service_dir, Gateway, SOON};
use lifecycle_tests::{loud, require_root, require_tool, GatewayConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NOBODY: u32 = 65534;

/// A temporary directory the service user can traverse, a spool it owns,
/// a certificate anyone may read and a key only root may read (0600).
struct Setup {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Setup {
    fn new() -> Setup {
        let dir = service_dir();
        let pair = rcgen::generate_simple_self_signed(vec!["gw.test".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
        Setup {
            dir,
            cert,
            key,
            der: pair.cert.der().to_vec(),
        }
    }

    fn config(&self, head: &str) -> String {
        GatewayConfig::new(self.dir.path().join("spool"))
            .head(head)
            .drain_grace("2s")
            .abort_grace("1s")
            .tls(&self.cert, &self.key)
            .no_listeners()
            .listener("smtp", "smtp", "127.0.0.1:0", r#"tls = "starttls""#)
            .listener("smtps", "smtp", "127.0.0.1:0", r#"tls = "implicit""#)
            .listener("imap", "imap", "127.0.0.1:0", "")
            .listener("imaps", "imap", "127.0.0.1:0", r#"tls = "implicit""#)
            .listener("http", "http", "127.0.0.1:0", "")
            .text()
    }

    fn start(self) -> (Gateway, PathBuf, PathBuf, Vec<u8>) {
        let config = self.config("user = \"nobody\"");
        let (cert, key, der) = (self.cert, self.key, self.der);
        (Gateway::launch(self.dir, &config, &[]), cert, key, der)
    }
}

/// `Key:\tvalue` of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    lifecycle_tests::ProcStats::new(pid)
        .status_text(key)
        .unwrap()
}

/// (fd, link target) of every open descriptor of `pid`.
fn fds(pid: u32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Dead: no longer in /proc, or a zombie waiting for its reaper.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn swaks(args: &[&str]) -> String {
    let out = Command::new("swaks")
        .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
        .args(["--helo", "client.example", "--timeout", "20"])
        .args(args)
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "swaks {args:?} failed:\n{transcript}");
    assert!(
        transcript.contains("250 2.0.0 ok: queued as"),
        "{transcript}"
    );
    transcript
}

/// Whether swaks can do TLS (it needs Perl's Net::SSLeay); loud when not.
fn swaks_has_tls() -> bool {
    let out = Command::new("swaks")
        .arg("--support")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("TLS supported") {
        return true;
    }
    lifecycle_tests::skip("swaks has no TLS (install libnet-ssleay-perl); swaks --tls deliveries not checked, openssl s_client still is");
    false
}

#[test]
fn a_nobody_child_serves_plain_and_tls_with_a_root_only_key() {
    if !require_root("the privileged start as user nobody")
        || !require_tool("swaks")
        || !require_tool("openssl")
    {
        return;
    }
    let (mut gw, cert, key, der) = Setup::new().start();
    let parent = gw.pid();
    let child = gw.service_pid();
    assert_ne!(parent, child);

    // The parent stays root; the child has nothing of root.
    assert!(status_field(parent, "Uid").starts_with("0\t"));
    for key in ["Uid", "Gid"] {
        assert_eq!(
            status_field(child, key),
            "65534\t65534\t65534\t65534",
            "{key}"
        );
    }
    assert_eq!(status_field(child, "Groups"), "");
    assert_eq!(status_field(child, "NoNewPrivs"), "1");
    assert_eq!(status_field(child, "CapEff"), "0000000000000000");
    assert_eq!(status_field(child, "CapPrm"), "0000000000000000");
    // The parent logs this once the child is ready; the log arrives through
    // an asynchronous drain and a pipe, so wait for it rather than read once.
    gw.wait_log(SOON, |l| l.contains(r#""msg":"service started""#))
        .unwrap_or_else(|| panic!("no \"service started\":\n{}", gw.log_text()));

    // The child's descriptors: 0-2, the five passed listeners at 3..=7 (the
    // parent's own sockets, same inodes), and what it made itself. The TLS
    // files were read and closed; nothing else of the parent's is open.
    let child_fds = fds(child);
    let parent_fds = fds(parent);
    let listed: Vec<String> = child_fds
        .iter()
        .map(|(fd, t)| format!("{fd} -> {t}"))
        .collect();
    loud(&format!("child fds: {}", listed.join(", ")));
    assert_eq!(child_fds[0], (0, "/dev/null".to_owned()));
    assert_eq!(child_fds[1], (1, "/dev/null".to_owned()));
    assert!(child_fds[2].1.starts_with("pipe:["), "{:?}", child_fds[2]);
    for fd in 3..=7 {
        let target = &child_fds.iter().find(|(f, _)| *f == fd).unwrap().1;
        assert!(target.starts_with("socket:["), "fd {fd}: {target}");
        assert!(
            parent_fds.iter().any(|(_, t)| t == target),
            "fd {fd} ({target}) is not one of the parent's listeners"
        );
    }
    let spool = gw.spool_dir().display().to_string();
    for (fd, target) in &child_fds {
        let own = target.starts_with("socket:[")
            || target.starts_with("anon_inode:")
            || target.starts_with("pipe:[")
            || target.starts_with(&spool)
            // The accept loops' reserve descriptor (answers at EMFILE).
            || target == "/dev/null";
        assert!(
            *fd <= 2 || own,
            "fd {fd} -> {target} is not the child's own: leaked?"
        );
        assert!(
            !target.contains("key.pem")
                && !target.contains("cert.pem")
                && !target.contains("gateway.toml"),
            "fd {fd} -> {target}"
        );
    }
    // The parent keeps the listeners, not the secret files.
    assert!(
        !parent_fds.iter().any(|(_, t)| t.contains("key.pem")),
        "{parent_fds:?}"
    );

    // The key is the root's: the service user cannot open it by path.
    let mut cat = Command::new("cat");
    lifecycle_tests::ServiceUser::nobody()
        .unwrap()
        .drop_privileges(&mut cat);
    let out = cat.arg(&key).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");

    // Plain, STARTTLS and implicit TLS deliveries.
    swaks(&["--server", &gw.smtp.to_string()]);
    let mut expected = 1;
    if swaks_has_tls() {
        let starttls = swaks(&["--server", &gw.smtp.to_string(), "--tls"]);
        assert!(starttls.contains("TLS started"), "{starttls}");
        let smtps = swaks(&[
            "--server",
            &gw.addr("smtps").to_string(),
            "--tls-on-connect",
        ]);
        assert!(smtps.contains("TLS started"), "{smtps}");
        expected += 2;
    }
    assert_eq!(gw.messages().len(), expected);
    let meta = std::fs::metadata(&gw.messages()[0]).unwrap();
    assert_eq!(meta.uid(), NOBODY, "spooled by the service user");

    // openssl: implicit IMAPS and SMTPS, and STARTTLS; the certificate
    // served is ours.
    let pem = std::fs::read_to_string(&cert).unwrap();
    let ours = served_pem(&pem).unwrap();
    for (addr, starttls, say, answer) in [
        (
            gw.addr("imaps"),
            None,
            "a1 LOGOUT\n",
            "a1 OK LOGOUT completed",
        ),
        (gw.addr("smtps"), None, "QUIT\n", "221 2.0.0"),
        (gw.smtp, Some("smtp"), "QUIT\n", "221 2.0.0"),
    ] {
        let t = s_client(addr, starttls, say);
        assert!(t.contains("Cipher is "), "{addr}: {t}");
        assert_eq!(
            served_pem(&t).as_deref(),
            Some(ours.as_str()),
            "{addr}: not our certificate"
        );
        assert!(t.contains(answer), "{addr}: {answer:?} in {t}");
    }
    assert!(!der.is_empty());
    gw.wait_log(SOON, |l| l.contains(r#""msg":"tls started""#))
        .unwrap_or_else(|| panic!("no \"tls started\":\n{}", gw.log_text()));

    // SIGTERM to the parent: the child drains, both exit 0.
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("parent still running");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
    let exited = gw
        .wait_log(SOON, |l| l.contains(r#""msg":"service exited""#))
        .unwrap();
    assert_eq!(number(&exited, "status"), Some(0), "{exited}");
    gw.wait_phase("stopped", SOON)
        .unwrap_or_else(|| panic!("no stopped phase:\n{}", gw.log_text()));
    assert!(dead(child), "the child is gone with its parent");
}

#[test]
fn sigkill_to_the_parent_takes_the_child_and_a_killed_child_gives_137() {
    if !require_root("the privileged start as user nobody") {
        return;
    }
    let (gw, ..) = Setup::new().start();
    let child = gw.service_pid();
    gw.signal(Signal::SIGKILL);
    let killed = Instant::now();
    while !dead(child) && killed.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    loud(&format!(
        "child {child} dead {:?} after SIGKILL to its parent",
        killed.elapsed()
    ));
    assert!(
        dead(child),
        "the child outlived its SIGKILLed parent by 1 s"
    );

    let (mut gw, ..) = Setup::new().start();
    let child = gw.service_pid();
    kill(Pid::from_raw(child as i32), Signal::SIGKILL).unwrap();
    let status = gw.wait_exit(SOON).expect("parent still running");
    assert_eq!(status.code(), Some(137), "{status:?}\n{}", gw.log_text());
}

/// Processes whose command line names `path`.
fn running_with(path: &Path) -> Vec<u32> {
    let needle = path.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| !dead(*pid))
        .collect()
}

#[test]
fn bad_starts_say_why_exit_non_zero_and_leave_nothing_running() {
    if !require_root("the privileged start") {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "port in use",
            format!("user = \"nobody\"\n[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"{busy_addr}\"\n"),
            vec![],
            "in use",
        ),
        (
            "hand-off variables already set",
            "user = \"nobody\"\n[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\n".to_owned(),
            vec![
                ("LIFECYCLE_SOCKETS", "smtp=tcp:127.0.0.1:25"),
                ("LIFECYCLE_FDS", "1"),
                ("LIFECYCLE_PARENT_PID", "1"),
            ],
            "LIFECYCLE_PARENT_PID",
        ),
        (
            "unknown user",
            "user = \"no-such-user-here\"\n[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\n".to_owned(),
            vec![],
            "no-such-user-here",
        ),
        (
            "root without allow_root",
            "[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\n".to_owned(),
            vec![],
            "allow_root = true",
        ),
    ];
    for (what, config, env, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(common::BIN)
            .arg("--config")
            .arg(&path)
            // The default spool directory is relative: made here, not in
            // the source tree.
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        loud(&format!("{what}: {}", stderr.lines().last().unwrap_or("")));
        assert!(!out.status.success(), "{what}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{what}: expected {expect:?} in {stderr}"
        );
        assert!(!stderr.contains("service started"), "{what}: {stderr}");
        assert!(
            !dir.path().join("spool").exists(),
            "{what}: a failed start left a spool directory behind"
        );
        assert_eq!(
            running_with(&path),
            Vec::<u32>::new(),
            "{what}: left running"
        );
    }
    drop(busy);
}
