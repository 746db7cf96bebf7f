//! Real descriptor passing to a real child process, in inherited mode (this
//! crate's protocol, fds mapped by `pass_fds`) and in systemd mode (through
//! `systemd-socket-activate`).
//!
//! The test binary re-executes itself; `HANDOFF_TEST_ROLE` selects the child
//! role. The child takes its listeners and files through `Handoff`, accepts
//! one connection per listener, reads every file, and reports on stdout.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use lifecycle_handoff::{
    escape, pass_fds, ChildHandoff, Handoff, ListenAddress, ListenerSpec, Manifest, Mode,
    ProcessEnvironment, VarNames,
};
use lifecycle_tests::{exit_after, open_fds, role_exit};

const ROLE: &str = "HANDOFF_TEST_ROLE";
/// Prefix of the variables that tell the child what its "configuration"
/// declares (the same specs the parent used, port 0 included).
const DECLARED: &str = "HANDOFF_TEST_DECLARED";
const TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("child") => run_child(),
        Ok(other) => {
            eprintln!("unknown {ROLE}={other}");
            ExitCode::FAILURE
        }
        Err(_) => {
            exit_after("fd_passing", TIMEOUT * 6);
            inherited_child_gets_every_listener_and_file();
            println!("test inherited_child_gets_every_listener_and_file ... ok");
            systemd_child_gets_named_and_unnamed_listeners();
            println!("test systemd_child_gets_named_and_unnamed_listeners ... ok");
            passed_descriptors_outlive_the_callers_copies();
            println!("test passed_descriptors_outlive_the_callers_copies ... ok");
            ExitCode::SUCCESS
        }
    }
}

// ---------------------------------------------------------------- child --

fn run_child() -> ExitCode {
    // Which descriptors did exec leave us? (read_dir's own fd shows too.)
    let fds = open_fds();
    role_exit("child", child(fds))
}

fn child(fds: Vec<i32>) -> Result<(), String> {
    let mut handoff = Handoff::detect("LIFECYCLE").map_err(|e| e.to_string())?;
    println!("mode {} ({})", handoff.mode(), handoff.reason());
    println!("fds {fds:?}");
    let names: Vec<&str> = handoff
        .inventory()
        .listeners
        .iter()
        .map(|l| l.spec.name())
        .collect();
    println!("names {names:?}");
    for var in [
        "LIFECYCLE_SOCKETS",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        if std::env::var_os(var).is_some() {
            return Err(format!("{var} still set after detect"));
        }
    }
    let declared = Manifest::decode(
        &mut ProcessEnvironment,
        &VarNames::new(DECLARED).map_err(|e| e.to_string())?,
        0,
    )
    .map_err(|e| e.to_string())?;

    let mut listeners = Vec::new();
    for spec in &declared.listeners {
        let fd = handoff.listen(spec).map_err(|e| e.to_string())?;
        println!("flags {} {}", spec.name(), flags(&fd));
        listeners.push((spec.clone(), fd));
    }
    for path in &declared.files {
        let mut text = String::new();
        handoff
            .open_privileged(path)
            .and_then(|mut f| {
                f.read_to_string(&mut text)
                    .map_err(|source| lifecycle_handoff::Error::Open {
                        path: path.clone(),
                        source,
                    })
            })
            .map_err(|e| e.to_string())?;
        println!(
            "file {} {}",
            escape(path.as_os_str().as_encoded_bytes()),
            text
        );
    }
    println!("left {}", handoff.inventory().len());
    for (spec, fd) in listeners {
        serve_one(&spec, fd).map_err(|e| format!("{spec}: {e}"))?;
    }
    Ok(())
}

fn flags(fd: &OwnedFd) -> String {
    // SAFETY: F_GETFL/F_GETFD only read flags of a descriptor we own.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(fd.as_raw_fd(), libc::F_GETFD),
        )
    };
    format!(
        "nonblocking={} cloexec={}",
        fl & libc::O_NONBLOCK != 0,
        fdfl & libc::FD_CLOEXEC != 0
    )
}

/// Accepts one connection, reads a line, answers `<name> got <line>`.
fn serve_one(spec: &ListenerSpec, fd: OwnedFd) -> std::io::Result<()> {
    let answer = |mut stream: Box<dyn ReadWrite>| -> std::io::Result<()> {
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line)?;
        writeln!(stream, "{} got {}", spec.name(), line.trim_end())
    };
    match spec.address() {
        ListenAddress::Tcp(_) => {
            let listener = TcpListener::from(fd);
            listener.set_nonblocking(false)?;
            let (stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            answer(Box::new(stream))
        }
        ListenAddress::Unix(_) => {
            let listener = UnixListener::from(fd);
            listener.set_nonblocking(false)?;
            let (stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            answer(Box::new(stream))
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

// --------------------------------------------------------------- parent --

fn declared_env(declared: &Manifest) -> Vec<(OsString, OsString)> {
    declared.encode(&VarNames::new(DECLARED).unwrap(), 0)
}

fn connect_and_greet(spec: &ListenerSpec, bound: &ListenAddress) -> String {
    let hello = format!("hello {}\n", spec.name());
    let mut reply = String::new();
    match bound {
        ListenAddress::Tcp(addr) => {
            let mut s = TcpStream::connect_timeout(addr, TIMEOUT).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(hello.as_bytes()).unwrap();
            BufReader::new(s).read_line(&mut reply).unwrap();
        }
        ListenAddress::Unix(path) => {
            let mut s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(hello.as_bytes()).unwrap();
            BufReader::new(s).read_line(&mut reply).unwrap();
        }
    }
    reply.trim_end().to_owned()
}

fn child_output(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "child failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

fn ipv6_loopback_works() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn inherited_child_gets_every_listener_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // Paths with a comma, a newline, `%` and a non-UTF-8 byte.
    let odd_key = dir.path().join("a,b%\n.key");
    let latin1 = dir.path().join(OsString::from_vec(b"k\xffey".to_vec()));
    std::fs::write(&odd_key, "alpha").unwrap();
    std::fs::write(&latin1, "beta").unwrap();
    let socket_path = dir.path().join("ctl, v1\n.sock");

    let mut declared = Manifest {
        listeners: vec![
            ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap()),
            ListenerSpec::tcp("submission,=%", "127.0.0.1:0".parse().unwrap()),
            ListenerSpec::unix("ctl", &socket_path),
        ],
        files: vec![odd_key.clone(), latin1.clone(), odd_key.clone()],
    };
    if ipv6_loopback_works() {
        declared
            .listeners
            .push(ListenerSpec::tcp("imap-v6", "[::1]:0".parse().unwrap()));
    } else {
        println!("NOTE: no IPv6 loopback here; testing IPv4 and Unix listeners only");
    }

    // The privileged parent: the same calls the child will make.
    let mut parent = Handoff::with_mode("LIFECYCLE", Mode::Privileged).unwrap();
    for spec in &declared.listeners {
        drop(parent.listen(spec).unwrap());
    }
    for path in &declared.files {
        drop(parent.open_privileged(path).unwrap());
    }
    let kept = parent.into_inventory();
    let n = kept.len();
    let handoff = ChildHandoff::new(&kept, &VarNames::default(), std::process::id());

    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(ROLE, "child")
        .envs(handoff.vars.iter().cloned())
        .envs(declared_env(&declared))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_fds(
        &mut command,
        handoff
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap()),
    );
    let child = command.spawn().unwrap();

    for (spec, kept) in declared.listeners.iter().zip(&kept.listeners) {
        let reply = connect_and_greet(spec, kept.spec.address());
        assert_eq!(reply, format!("{} got hello {}", spec.name(), spec.name()));
    }
    let out = child_output(child);

    assert!(out.contains("mode inherited"), "{out}");
    // Exactly stdio, the n passed fds, and read_dir's own (numbered 3 + n).
    let expected: Vec<i32> = (0..=2 + n as i32 + 1).collect();
    assert!(out.contains(&format!("fds {expected:?}\n")), "fds: {out}");
    for spec in &declared.listeners {
        assert!(
            out.contains(&format!(
                "flags {} nonblocking=true cloexec=true",
                spec.name()
            )),
            "{out}"
        );
    }
    // Each file read, the repeated path twice, in order.
    let files: Vec<&str> = out.lines().filter(|l| l.starts_with("file ")).collect();
    let want = [
        format!(
            "file {} alpha",
            escape(odd_key.as_os_str().as_encoded_bytes())
        ),
        format!(
            "file {} beta",
            escape(latin1.as_os_str().as_encoded_bytes())
        ),
        format!(
            "file {} alpha",
            escape(odd_key.as_os_str().as_encoded_bytes())
        ),
    ];
    assert_eq!(files, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("left 0\n"), "every passed fd was taken: {out}");
}

fn systemd_child_gets_named_and_unnamed_listeners() {
    let Ok(tool) = which("systemd-socket-activate") else {
        println!("SKIP: systemd-socket-activate not installed (apt-get install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("ctl.sock");
    // The TCP listener is ours (port 0), passed through systemd-socket-activate
    // in LISTEN_FDS; the Unix one systemd-socket-activate binds itself.
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap();
    let declared = Manifest {
        // The child serves in this order; the first connection (to ctl)
        // is what makes systemd-socket-activate start it.
        listeners: vec![
            // Unnamed ("unknown") in LISTEN_FDNAMES: found by its address.
            ListenerSpec::unix("ctl", &socket_path),
            ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap()),
        ],
        files: vec![],
    };
    // systemd-socket-activate passes on only the variables named with -E.
    let pass_on: String = declared_env(&declared)
        .iter()
        .map(|(name, _)| format!(" -E {}", name.to_string_lossy()))
        .collect();
    let script = format!(
        "LISTEN_FDS=1 LISTEN_PID=$$ exec {} -l \"$1\" --fdname=web:unknown -E {ROLE}=child{pass_on} -- \"$2\"",
        tool.display()
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&socket_path)
        .arg(std::env::current_exe().unwrap())
        .envs(declared_env(&declared))
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_fds(&mut command, [OwnedFd::from(web)]);
    let child = command.spawn().unwrap();

    // systemd-socket-activate starts the service on the first connection.
    wait_for_path(&socket_path);
    let greet = std::panic::catch_unwind(|| {
        let ctl = connect_and_greet(
            &declared.listeners[0],
            &ListenAddress::Unix(socket_path.clone()),
        );
        let web = connect_and_greet(&declared.listeners[1], &ListenAddress::Tcp(web_addr));
        (ctl, web)
    });
    let out = child_output(child);
    let (ctl, web) = greet.unwrap_or_else(|_| panic!("greeting failed; child said:\n{out}"));
    assert_eq!(ctl, "ctl got hello ctl");
    assert_eq!(web, "web got hello web");
    assert!(out.contains("mode systemd"), "{out}");
    assert!(
        out.contains("flags web nonblocking=true cloexec=true"),
        "{out}"
    );
    assert!(
        out.contains("flags ctl nonblocking=true cloexec=true"),
        "{out}"
    );
    assert!(out.contains("left 0\n"), "{out}");
    assert!(out.contains("names [\"web\", \"unix:"), "{out}");
}

/// `pass_fds` owns what it passes: the caller gives its listener away and
/// closes everything else it had; new sockets opened before `spawn` (which
/// would take freed numbers) do not reach the child, the listener does.
fn passed_descriptors_outlive_the_callers_copies() {
    let spec = ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap());
    let mut parent = Handoff::with_mode("LIFECYCLE", Mode::Privileged).unwrap();
    drop(parent.listen(&spec).unwrap());
    let kept = parent.into_inventory();
    let vars = ChildHandoff::new(&kept, &VarNames::default(), std::process::id()).vars;
    let bound = kept.listeners[0].spec.address().clone();
    let declared = Manifest {
        listeners: vec![spec],
        files: vec![],
    };
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(ROLE, "child")
        .envs(vars)
        .envs(declared_env(&declared))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_fds(&mut command, kept.listeners.into_iter().map(|l| l.fd));
    // Other listeners, opened after the hand-over: had the command kept
    // only the numbers, these would now sit at the freed ones.
    let decoys: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let child = command.spawn().unwrap();
    drop(command);
    let greeted = std::panic::catch_unwind(|| connect_and_greet(&declared.listeners[0], &bound));
    let out = child_output(child);
    let reply = greeted.unwrap_or_else(|_| panic!("greeting failed; child said:\n{out}"));
    assert_eq!(reply, "web got hello web");
    assert!(out.contains("mode inherited"), "{out}");
    assert!(out.contains("left 0\n"), "{out}");
    drop(decoys);
}

fn wait_for_path(path: &Path) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{path:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}
