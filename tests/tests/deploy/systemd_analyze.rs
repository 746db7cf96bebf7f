//! `systemd-analyze verify` and `security` on the units, and checks that
//! fail on weakened units.

use lifecycle_tests::{loud, require_tool, temp_dir, UnitFile};
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

use crate::{
    systemd_dir, unit_names, ACTIVATED, ACTIVATED_BOUND, CAP_DROP_IN, INSTALLED_BINARY, PRIVILEGED,
    PRIVILEGED_BOUND,
};

/// An executable that exists on this machine, quoted for ExecStart=: this
/// test binary itself.
fn stand_in_binary() -> String {
    let exe = std::env::current_exe().expect("path of the test binary");
    let exe = exe.to_str().expect("test binary path is UTF-8");
    let escaped = exe
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

/// Copies every unit into a fresh directory, the installed binary path
/// replaced by [`stand_in_binary`], after applying `edit` to each text.
fn stage_units(edit: impl Fn(&str, String) -> String) -> TempDir {
    let dir = temp_dir("units").expect("temp dir");
    let binary = stand_in_binary();
    for name in unit_names() {
        let text = std::fs::read_to_string(systemd_dir().join(&name)).expect("read unit");
        let text = edit(&name, text.replace(INSTALLED_BINARY, &binary));
        std::fs::write(dir.path().join(&name), text).expect("write staged unit");
    }
    dir
}

fn systemd_analyze(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .expect("run systemd-analyze")
}

/// `systemd-analyze verify` on the named units of `dir`: Ok only when it
/// succeeds and prints nothing at all.
fn verify(dir: &Path, names: &[String]) -> Result<(), String> {
    let mut args = vec!["verify", "--man=no"];
    let paths: Vec<String> = names.iter().map(|n| format!("./{n}")).collect();
    args.extend(paths.iter().map(String::as_str));
    let out = systemd_analyze(dir, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "systemd-analyze verify {names:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        ))
    }
}

/// The overall exposure `systemd-analyze security --offline=true` gives
/// the unit `name` staged in `dir`.
fn exposure(dir: &Path, name: &str) -> f64 {
    let unit = format!("./{name}");
    let out = systemd_analyze(
        dir,
        &["security", "--offline=true", "--no-pager", unit.as_str()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze security {name}: {}\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure line for {name}:\n{stdout}\n{stderr}"));
    let (_, tail) = line.rsplit_once(": ").expect("exposure line has ': '");
    let score = tail.split_whitespace().next().expect("exposure figure");
    score
        .parse()
        .unwrap_or_else(|e| panic!("exposure {score:?} of {name} is not a number ({e}): {line}"))
}

/// Drops every line that assigns one of `keys`.
fn without_keys(text: &str, keys: &[&str]) -> String {
    text.lines()
        .filter(|line| {
            let key = line.split_once('=').map_or("", |(k, _)| k.trim());
            !keys.contains(&key)
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn check_exposure(name: &str, bound: f64) {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = stage_units(|_, text| text);
    let score = exposure(dir.path(), name);
    loud(&format!(
        "systemd-analyze security --offline=true {name}: exposure {score:.1} (bound {bound})"
    ));
    assert!(
        score <= bound,
        "{name} scores an exposure of {score}, above the bound {bound}; \
         run `systemd-analyze security --offline=true deploy/systemd/{name}` and tighten it"
    );
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let names = unit_names();
    assert!(
        names.len() >= 5,
        "expected 2 services and 3 sockets: {names:?}"
    );
    let dir = stage_units(|_, text| text);
    verify(dir.path(), &names).unwrap_or_else(|e| panic!("{e}"));
    loud(&format!(
        "systemd-analyze verify: {} units clean",
        names.len()
    ));
}

#[test]
fn privileged_service_exposure_is_within_bound() {
    check_exposure(PRIVILEGED, PRIVILEGED_BOUND);
}

#[test]
fn activated_service_exposure_is_within_bound() {
    check_exposure(ACTIVATED, ACTIVATED_BOUND);
}

/// The CAP_NET_BIND_SERVICE drop-in (no root at all) applies cleanly to
/// the privileged unit and leaves it less exposed than the root parent.
#[test]
fn cap_net_bind_service_drop_in_applies_and_scores_lower() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = stage_units(|_, text| text);
    let root_parent = exposure(dir.path(), PRIVILEGED);
    let drop_ins = dir.path().join(format!("{PRIVILEGED}.d"));
    std::fs::create_dir(&drop_ins).expect("mkdir drop-in dir");
    std::fs::copy(systemd_dir().join(CAP_DROP_IN), drop_ins.join(CAP_DROP_IN))
        .expect("stage drop-in");
    verify(dir.path(), &[PRIVILEGED.to_owned()]).unwrap_or_else(|e| panic!("{e}"));
    let score = exposure(dir.path(), PRIVILEGED);
    loud(&format!(
        "systemd-analyze security --offline=true {PRIVILEGED} + {CAP_DROP_IN}: exposure {score:.1}"
    ));
    assert!(
        score < root_parent,
        "with {CAP_DROP_IN}: {score}, root parent: {root_parent}"
    );
    let unit = UnitFile::read(&systemd_dir().join(CAP_DROP_IN)).expect("drop-in parses");
    assert_eq!(unit.value("Service", "User"), Some("lifecycle-gateway"));
    assert_eq!(
        unit.value("Service", "AmbientCapabilities"),
        Some("CAP_NET_BIND_SERVICE")
    );
}

/// The checks above can fail: a weakened unit scores above its bound, and
/// a misspelt key or a bad value makes verify complain.
#[test]
fn the_checks_fail_on_weakened_units() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let weak = stage_units(|name, text| match name {
        PRIVILEGED => without_keys(&text, &["CapabilityBoundingSet", "SystemCallFilter"]),
        ACTIVATED => without_keys(&text, &["DynamicUser", "CapabilityBoundingSet"]),
        _ => text,
    });
    let privileged = exposure(weak.path(), PRIVILEGED);
    let activated = exposure(weak.path(), ACTIVATED);
    loud(&format!(
        "weakened units: {PRIVILEGED} {privileged:.1}, {ACTIVATED} {activated:.1}"
    ));
    assert!(
        privileged > PRIVILEGED_BOUND,
        "weakened {PRIVILEGED}: {privileged}"
    );
    assert!(
        activated > ACTIVATED_BOUND,
        "weakened {ACTIVATED}: {activated}"
    );

    let misspelt = stage_units(|_, text| text.replace("KillMode=mixed", "KilMode=mixed"));
    let err = verify(misspelt.path(), &[PRIVILEGED.to_owned()]).expect_err("misspelt key");
    assert!(err.contains("KilMode"), "{err}");

    let bad_value = stage_units(|_, text| text.replace("Type=notify", "Type=notifyy"));
    let err = verify(bad_value.path(), &[ACTIVATED.to_owned()]).expect_err("bad value");
    assert!(err.contains("notifyy"), "{err}");
}
