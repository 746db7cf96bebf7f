//! The deployment files in `deploy/`.
//!
//! - systemd accepts every unit (`systemd-analyze verify`, and no warning
//!   either: verify exits 0 on unknown keys and bad values, it only warns);
//! - the services are as hardened as issue 7 promises
//!   (`systemd-analyze security --offline=true` exposure at most 2.3 for the
//!   privileged start, 1.3 for the socket-activated service, without any
//!   IPAddressDeny=/IPAddressAllow=), and the checks do fail on weakened units;
//! - the units, `gateway.toml` and the sysusers/tmpfiles snippets agree.
//!
//! Run alone: `cargo test -p lifecycle-tests --test deploy -- --nocapture`.

mod agreement;
mod systemd_analyze;

use lifecycle_tests::{workspace_root, UnitFile};
use std::path::PathBuf;

const PRIVILEGED: &str = "lifecycle-gateway.service";
const ACTIVATED: &str = "lifecycle-gateway-activated.service";
const PRIVILEGED_BOUND: f64 = 2.3;
const ACTIVATED_BOUND: f64 = 1.3;
/// Where the units expect the binary; replaced in staged copies, because
/// `systemd-analyze verify` rejects an ExecStart= that is not executable.
const INSTALLED_BINARY: &str = "/usr/local/bin/lifecycle-gateway";
const INSTALLED_CONFIG: &str = "/etc/lifecycle-gateway/gateway.toml";
/// Drop-in for the privileged unit: run unprivileged with CAP_NET_BIND_SERVICE.
const CAP_DROP_IN: &str = "cap-net-bind-service.conf";

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn systemd_dir() -> PathBuf {
    deploy_dir().join("systemd")
}

/// File names of every unit in deploy/systemd, sorted.
fn unit_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(systemd_dir())
        .expect("read deploy/systemd")
        .map(|entry| entry.expect("list deploy/systemd").file_name())
        .map(|name| name.into_string().expect("unit names are UTF-8"))
        .filter(|name| name.ends_with(".service") || name.ends_with(".socket"))
        .collect();
    names.sort();
    names
}

fn socket_names() -> Vec<String> {
    unit_names()
        .into_iter()
        .filter(|n| n.ends_with(".socket"))
        .collect()
}

fn read_unit(name: &str) -> UnitFile {
    UnitFile::read(&systemd_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}
