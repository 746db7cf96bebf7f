//! The rig: a booted container with one setup of deploy/README.md
//! installed as an operator would, and what the cases ask of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::overlay::Overlay;
use lifecycle_tests::{
    cached_root, cannot_boot, gateway_bin, loud, metric_value, skip, workspace_root, Container,
};

pub(crate) const PRIVILEGED: &str = "lifecycle-gateway.service";
pub(crate) const ACTIVATED: &str = "lifecycle-gateway-activated.service";
pub(crate) const SOCKETS: [&str; 3] = [
    "lifecycle-gateway-activated-smtp.socket",
    "lifecycle-gateway-activated-imap.socket",
    "lifecycle-gateway-activated-http.socket",
];
/// Bounds a wait for a state; never a measurement.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// Stops after a reload, per unit and order (`LIFECYCLE_STOP_ROUNDS`
/// overrides it, to chase a rare failure).
pub(crate) const STOP_ROUNDS: usize = 20;
/// How long a stop (of an idle gateway: it exits at once) may take before
/// the test records the unit's processes for the failure message; well
/// below `TimeoutStopSec=` (6 s). Not an assertion.
pub(crate) const LOOK_AT_A_STOP: Duration = Duration::from_secs(2);

/// The `sh` block that follows `heading` in deploy/README.md, without the
/// lines that build with cargo (the test installs the binary it was given).
pub(crate) fn readme_block(heading: &str) -> String {
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
pub(crate) enum Setup {
    /// `lifecycle-gateway.service`: the root parent and its child.
    Privileged,
    /// The same unit with `cap-net-bind-service.conf`: no root, the
    /// gateway hands over to a successor of itself on reload.
    CapDropIn,
    /// `lifecycle-gateway-activated.service` and its sockets.
    Activated,
}

pub(crate) struct Rig {
    pub(crate) c: Container,
    pub(crate) setup: Setup,
    pub(crate) unit: &'static str,
    pub(crate) spool: &'static str,
    pub(crate) _stage: tempfile::TempDir,
    /// What is bound into the container, for a reboot.
    pub(crate) binds: Vec<(std::path::PathBuf, String)>,
    /// The root it boots (after the container, dropped last).
    pub(crate) overlay: Overlay,
}

/// Boots a container with the sources an operator has (deploy/, the
/// release binary at target/release/lifecycle-gateway, a failing binary
/// under /stage) and runs the README's install steps for `unit`.
pub(crate) fn rig(setup: Setup) -> Option<Rig> {
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
    // Writable (an overlay of the cached root), so that a reboot keeps
    // what was installed.
    let overlay = Overlay::mount(&root);
    let booted = Instant::now();
    let c = Container::boot_writable(overlay.root(), &binds).unwrap_or_else(|e| panic!("{e}"));
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
    let binds = (binds.iter())
        .map(|(host, inside)| (host.to_path_buf(), (*inside).to_owned()))
        .collect();
    let rig = Rig {
        c,
        setup,
        unit,
        spool,
        _stage: stage,
        binds,
        overlay,
    };
    rig.wait_active();
    Some(rig)
}

impl Rig {
    pub(crate) fn show(&self) -> BTreeMap<String, String> {
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

    pub(crate) fn prop(&self, key: &str) -> String {
        self.show().get(key).cloned().unwrap_or_default()
    }

    /// The serving process: the main one, or the privileged parent's child.
    pub(crate) fn serving_pid(&self) -> String {
        let main = self.prop("MainPID");
        if self.setup != Setup::Privileged {
            return main;
        }
        self.c
            .sh(&format!(
                "grep -l '^PPid:[[:space:]]*{main}$' /proc/[0-9]*/status | cut -d/ -f3"
            ))
            .unwrap()
            .split_whitespace()
            .next()
            .expect("the parent has a child")
            .to_owned()
    }

    pub(crate) fn journal(&self) -> String {
        self.c.journal(self.unit)
    }

    /// Waits until `what` holds, or fails with the unit's state and journal.
    pub(crate) fn wait_for(&self, what: &str, mut ok: impl FnMut(&Rig) -> bool) {
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

    pub(crate) fn wait_active(&self) {
        self.wait_for("active (running) with a main pid", |r| {
            let s = r.show();
            s["SubState"] == "running" && s["MainPID"] != "0"
        });
    }

    /// Starts the unit as an operator would (for the activated one: its
    /// sockets, then the service).
    pub(crate) fn start(&self) {
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

    pub(crate) fn metrics(&self) -> Option<String> {
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

    pub(crate) fn generation(&self) -> Option<u64> {
        self.metrics()
            .and_then(|m| metric_value(&m, "lifecycle_generation", &[]))
            .map(|g| g as u64)
    }

    /// Delivers one message with swaks; true when it was acknowledged (250
    /// after DATA).
    pub(crate) fn deliver(&self, body: &str) -> bool {
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

    pub(crate) fn spool_has(&self, body: &str) -> bool {
        self.c
            .sh_status(&format!("grep -rlF -- '{body}' {}", self.spool))
            .0
    }

    /// Installs `source` (a path inside the container) as the binary, the
    /// README's way (install to .new, atomic mv), then `systemctl reload`.
    pub(crate) fn reload_with(&self, source: &str) -> (bool, String) {
        self.c
            .sh(&format!(
                "install -m 0755 {source} /usr/local/bin/lifecycle-gateway.new\n\
             mv -f /usr/local/bin/lifecycle-gateway.new /usr/local/bin/lifecycle-gateway"
            ))
            .unwrap();
        self.c.sh_status(&format!("systemctl reload {}", self.unit))
    }

    /// Asserts the sandbox never killed a process: no SIGSYS in the journal.
    pub(crate) fn assert_no_seccomp_kill(&self) {
        let journal = self.journal();
        assert!(
            !journal.contains("status=31/SYS") && !journal.contains("signal=SYS"),
            "SystemCallFilter= killed a process:\n{journal}"
        );
    }
}
