//! A real systemd for the deployment tests: a Debian 12 root file system
//! built once with `debootstrap` (cached under the target directory) and
//! booted with `systemd-nspawn --boot`, driven from the outside with
//! `nsenter`.
//!
//! The cache is `<target>/nspawn-root/rootfs`; the stamp file
//! `<target>/nspawn-root/complete` is written last, so an interrupted build
//! is redone. Each [`Container`] boots it with `--volatile=overlay`: the
//! container's writes go to a tmpfs and the cache stays clean.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::paths::workspace_root;
use crate::process::ChildGuard;

/// What the stamp file holds: a root built with other packages is rebuilt.
const STAMP: &str = "bookworm minbase systemd,systemd-sysv,dbus,python3,procps\n";
/// The packages the root needs besides `minbase`. `procps` is for
/// `/bin/kill`, which the units' `ExecReload=` runs: minbase lacks it,
/// every ordinary Debian install has it.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,python3,procps";
/// Longest wait for the container's systemd to finish booting.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for the container to power off.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no container could be had.
#[derive(Debug, thiserror::Error)]
pub enum NspawnError {
    /// A tool failed or could not be run.
    #[error("{what} failed: {detail}")]
    Tool {
        /// The command, as typed.
        what: String,
        /// Its exit status and output.
        detail: String,
    },
    /// An I/O error on the named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The container did not boot.
    #[error("the container did not boot within {timeout:?} ({detail}); run `systemd-nspawn --boot -D {root}` by hand to see why")]
    Boot {
        /// How long it was given.
        timeout: Duration,
        /// The root file system.
        root: PathBuf,
        /// What was seen.
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NspawnError + '_ {
    move |source| NspawnError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `command` and returns its output, or a [`NspawnError::Tool`]
/// naming it when it cannot start or exits non-zero.
pub(crate) fn run(command: &mut Command) -> Result<Output, NspawnError> {
    let what = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NspawnError::Tool {
            what: what.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NspawnError::Tool {
            what,
            detail: format!(
                "{}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

/// The target directory: `CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The Debian mirror this machine's apt uses for bookworm (from
/// `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`),
/// `None` to let debootstrap choose its default.
pub fn apt_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str());
            if matches!(ext, Some("list" | "sources")) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    texts.push(text);
                }
            }
        }
    }
    texts.iter().find_map(|t| mirror_in(t))
}

/// The first URI in `text` (one-line or deb822 format) whose suite is
/// `bookworm` with component `main`.
fn mirror_in(text: &str) -> Option<String> {
    // One-line format: deb [options] URI suite components...
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        let mut rest = &words[1..];
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']'))?;
            rest = &rest[close + 1..];
        }
        if rest.len() >= 3 && rest[1] == "bookworm" && rest[2..].contains(&"main") {
            return Some(rest[0].to_owned());
        }
    }
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        let (Some(types), Some(uris), Some(suites), Some(components)) = (
            field("Types"),
            field("URIs"),
            field("Suites"),
            field("Components"),
        ) else {
            continue;
        };
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == "bookworm")
            && components.split_whitespace().any(|c| c == "main")
        {
            return uris.split_whitespace().next().map(str::to_owned);
        }
    }
    None
}

/// Why a container cannot be booted here, or `None` when it can be tried:
/// not root, or `debootstrap`, `systemd-nspawn` or `nsenter` missing.
pub fn cannot_boot() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: systemd-nspawn and debootstrap need root".to_owned());
    }
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} not installed (Debian package {package}; scripts/test installs it as root)"
            ));
        }
    }
    None
}

static BUILD: Mutex<()> = Mutex::new(());

/// The cached Debian 12 root file system, built first when missing or
/// incomplete (two to three minutes; `debootstrap --variant=minbase
/// --include=systemd,systemd-sysv,dbus,python3,procps bookworm`, from the mirror
/// this machine's apt uses).
pub fn cached_root() -> Result<PathBuf, NspawnError> {
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let base = target_dir().join("nspawn-root");
    let root = base.join("rootfs");
    let stamp = base.join("complete");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == STAMP) && root.is_dir() {
        return Ok(root);
    }
    std::fs::create_dir_all(&base).map_err(io_err(&base))?;
    let _ = std::fs::remove_file(&stamp);
    let partial = base.join("rootfs.partial");
    for dir in [&partial, &root] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    crate::tool::loud(&format!(
        "building the Debian 12 root for systemd-nspawn in {} (once; a few minutes)",
        root.display()
    ));
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .arg("--variant=minbase")
        .arg(format!("--include={INCLUDE}"))
        .arg("bookworm")
        .arg(&partial);
    if let Some(mirror) = apt_mirror() {
        debootstrap.arg(mirror);
    }
    run(&mut debootstrap)?;
    std::fs::rename(&partial, &root).map_err(io_err(&root))?;
    std::fs::write(&stamp, STAMP).map_err(io_err(&stamp))?;
    Ok(root)
}

/// A booted container: `systemd-nspawn --boot` over a [`cached_root`] with
/// a tmpfs overlay, its own network namespace (only `lo`), and the given
/// host paths bound into it. Powered off (then killed, if need be) when
/// dropped.
#[derive(Debug)]
pub struct Container {
    nspawn: Option<ChildGuard>,
    init: u32,
    console: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Container {
    /// Boots `root` with each `(host path, container path)` of `binds`
    /// bound read-only, and waits until its systemd reports the system
    /// running.
    pub fn boot(root: &Path, binds: &[(&Path, &str)]) -> Result<Container, NspawnError> {
        Container::boot_with(root, binds, true)
    }

    /// [`boot`](Self::boot) without the volatile overlay: what the
    /// container writes stays in `root`, so a second boot of the same
    /// `root` finds it (a reboot). Give it a root it may change, such as
    /// an overlay mount of the cached one.
    pub fn boot_writable(root: &Path, binds: &[(&Path, &str)]) -> Result<Container, NspawnError> {
        Container::boot_with(root, binds, false)
    }

    fn boot_with(
        root: &Path,
        binds: &[(&Path, &str)],
        volatile: bool,
    ) -> Result<Container, NspawnError> {
        let scratch = crate::paths::temp_dir("nspawn").map_err(io_err(Path::new("/tmp")))?;
        let console = scratch.path().join("console");
        let log = std::fs::File::create(&console).map_err(io_err(&console))?;
        let log2 = log.try_clone().map_err(io_err(&console))?;
        let name = format!("lifecycle-{}", std::process::id());
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=pipe",
            "--quiet",
        ])
        .args(volatile.then_some("--volatile=overlay"))
        .arg(format!("--machine={name}"))
        .arg("-D")
        .arg(root);
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let nspawn = ChildGuard::spawn(&mut cmd).map_err(|e| NspawnError::Tool {
            what: "systemd-nspawn".to_owned(),
            detail: e.to_string(),
        })?;
        let mut container = Container {
            init: 0,
            nspawn: Some(nspawn),
            console,
            _scratch: scratch,
        };
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let boot_error = |c: &Container, detail: &str| NspawnError::Boot {
            timeout: BOOT_TIMEOUT,
            root: root.to_path_buf(),
            detail: format!("{detail}; console: {}", c.console_text()),
        };
        // The container's init is the child of systemd-nspawn that runs
        // systemd (an intermediate child may show up first, briefly).
        let nspawn_pid = container.nspawn.as_ref().map_or(0, ChildGuard::id);
        let is_systemd = |pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "systemd")
        };
        loop {
            if let Some(guard) = container.nspawn.as_mut() {
                if let Ok(Some(status)) = guard.try_wait() {
                    return Err(boot_error(
                        &container,
                        &format!("systemd-nspawn exited: {status}"),
                    ));
                }
            }
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                    .unwrap_or_default();
            let init = children
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .find(is_systemd);
            if let Some(pid) = init {
                container.init = pid;
                break;
            }
            if Instant::now() > deadline {
                return Err(boot_error(&container, "no init process"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // `is-system-running --wait` needs the system bus up; retry until it answers.
        loop {
            let out = container
                .command("systemctl", &["is-system-running", "--wait"])
                .output();
            let state = out
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            if state == "running" || state == "degraded" {
                return Ok(container);
            }
            if Instant::now() > deadline {
                return Err(boot_error(&container, &format!("system state {state:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container's init process (its systemd), as the host sees it.
    pub fn init_pid(&self) -> u32 {
        self.init
    }

    /// What the container wrote to its console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// `program args...` inside the container (every namespace: its file
    /// system, pids, network), not yet run.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init.to_string())
            .arg("-a")
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// A host `program` run in the container's network namespace only (so
    /// `127.0.0.1` is the container's loopback), e.g. the host's `swaks`.
    pub fn net_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init.to_string())
            .arg("-n")
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the shell `script` in the container (`sh -ec`); fails when it
    /// exits non-zero.
    pub fn sh(&self, script: &str) -> Result<String, NspawnError> {
        let out = run(&mut self.command("sh", &["-ec", script]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The shell `script`'s output and whether it succeeded.
    pub fn sh_status(&self, script: &str) -> (bool, String) {
        match self.command("sh", &["-c", script]).output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    /// `systemctl show -p <props> <unit>` as a map.
    pub fn show(
        &self,
        unit: &str,
        props: &[&str],
    ) -> Result<BTreeMap<String, String>, NspawnError> {
        let out = run(&mut self.command("systemctl", &["show", "-p", &props.join(","), unit]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// The journal of `unit` (`journalctl -u <unit> -o cat`), or of the
    /// whole container for `""`.
    pub fn journal(&self, unit: &str) -> String {
        let mut args = vec!["--no-pager", "-o", "short-monotonic"];
        if !unit.is_empty() {
            args.extend(["-u", unit]);
        }
        self.command("journalctl", &args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// What a failed assertion on `unit` should print besides its journal,
    /// to tell a process that did not exit from a systemd that missed its
    /// exit: `systemctl status`, the unit's main/control pids and cgroup,
    /// the cgroup's `cgroup.events` (`populated`), every process and
    /// thread still in it with state, wait channel and kernel stack, and
    /// the container's whole process table. Never fails: a step that
    /// cannot run says so in the text.
    pub fn diagnose(&self, unit: &str) -> String {
        let script = format!(
            r#"
u='{unit}'
echo "== systemctl status $u"; systemctl status --no-pager -l "$u" 2>&1 | head -40
echo "== properties"; systemctl show -p MainPID,ControlPID,ExecMainPID,ExecMainCode,ExecMainStatus,ActiveState,SubState,Result,ExitType,NotifyAccess,ControlGroup,InvocationID "$u"
cg=$(systemctl show -P ControlGroup "$u")
for base in /sys/fs/cgroup/unified /sys/fs/cgroup; do
  d="$base$cg"
  [ -n "$cg" ] && [ -f "$d/cgroup.events" ] || continue
  echo "== $d/cgroup.events"; cat "$d/cgroup.events"
  for f in $(find "$d" -name cgroup.threads 2>/dev/null); do
    echo "== threads in $f"
    for t in $(cat "$f"); do
      echo "-- tid $t: $(tr -d '\n' < /proc/$t/comm 2>/dev/null) state=$(grep '^State:' /proc/$t/status 2>/dev/null | cut -f2) ppid=$(grep '^PPid:' /proc/$t/status 2>/dev/null | cut -f2) tgid=$(grep '^Tgid:' /proc/$t/status 2>/dev/null | cut -f2) wchan=$(cat /proc/$t/wchan 2>/dev/null)"
      cat /proc/$t/stack 2>/dev/null | head -12
    done
  done
  break
done
echo "== ps"; ps -eLo pid,tid,ppid,stat,wchan:28,etimes,comm,args 2>&1 | head -80
"#
        );
        match self.command("sh", &["-c", &script]).output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot diagnose {unit}: {e}"),
        }
    }

    /// Powers the container off (SIGTERM to systemd-nspawn, which asks its
    /// init to halt) and waits for it; kills it if it hangs.
    pub fn poweroff(&mut self) {
        if let Some(mut guard) = self.nspawn.take() {
            let _ = guard.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = guard.wait_timeout(POWEROFF_TIMEOUT);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.poweroff();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822() {
        let text = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://other.invalid/security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://mirror.invalid/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_format() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://mirror.invalid/debian")
        );
        assert_eq!(
            mirror_in("deb http://x.invalid/d bookworm-security main\n"),
            None
        );
    }
}
