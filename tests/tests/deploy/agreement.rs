//! The units, `gateway.toml` and the sysusers/tmpfiles snippets agree
//! with each other and with the lifecycle contract.

use lifecycle_tests::{
    all_settings_on, check_config, require_root, require_tool, temp_dir, ConfigCheck,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{
    deploy_dir, read_unit, socket_names, ACTIVATED, INSTALLED_BINARY, INSTALLED_CONFIG, PRIVILEGED,
};

/// What the Rust side relies on: both services are Type=notify, reload is
/// `ctl upgrade --wait` on the control socket in the unit's
/// RuntimeDirectory=, a failure restarts; the privileged service starts as root and
/// keeps only the capabilities it needs, the activated one has none; no
/// bound is reached by restricting client addresses.
#[test]
fn services_keep_the_lifecycle_contract() {
    for name in [PRIVILEGED, ACTIVATED] {
        let unit = read_unit(name);
        let s = |key| unit.value("Service", key);
        assert_eq!(s("Type"), Some("notify"), "{name}");
        // The activated service's successor names itself (MAINPID=) once
        // its predecessor exited, before it is the main process.
        let access = if name == ACTIVATED { "all" } else { "main" };
        assert_eq!(s("NotifyAccess"), Some(access), "{name}");
        // The process that owns upgrades (the privileged parent, or the
        // serving process itself) serves the control socket: `systemctl
        // reload` gets the upgrade's result from `ctl upgrade --wait`.
        let reload = format!(
            "{INSTALLED_BINARY} ctl --config {INSTALLED_CONFIG} upgrade --wait --timeout 80s"
        );
        assert_eq!(s("RuntimeDirectory"), Some("lifecycle-gateway"), "{name}");
        assert_eq!(s("ExecReload"), Some(reload.as_str()), "{name}");
        assert_eq!(s("Restart"), Some("on-failure"), "{name}");
        let exec = s("ExecStart").expect("ExecStart=");
        assert_eq!(
            exec,
            format!("{INSTALLED_BINARY} --config {INSTALLED_CONFIG}"),
            "{name}"
        );
        for key in ["IPAddressDeny", "IPAddressAllow", "PrivateNetwork"] {
            assert!(
                s(key).is_none(),
                "{name} must serve any client: drop {key}="
            );
        }
    }

    let privileged = read_unit(PRIVILEGED);
    let p = |key| privileged.value("Service", key);
    assert_eq!(p("User"), None, "the parent must start as root");
    assert_eq!(p("DynamicUser"), None, "the parent must start as root");
    assert_eq!(p("KillMode"), Some("mixed"), "SIGTERM to the parent only");
    let caps: BTreeSet<&str> = p("CapabilityBoundingSet")
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .collect();
    let needed = BTreeSet::from([
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETGID",
        "CAP_SETUID",
    ]);
    assert_eq!(
        caps, needed,
        "{PRIVILEGED}: bind, drop privileges, signal the child"
    );

    let activated = read_unit(ACTIVATED);
    let a = |key| activated.value("Service", key);
    assert_eq!(a("DynamicUser"), Some("yes"));
    assert_eq!(a("CapabilityBoundingSet"), Some(""), "no capability at all");
    assert_eq!(a("User"), None);
}

fn config() -> toml::Table {
    let text = std::fs::read_to_string(deploy_dir().join("gateway.toml")).expect("gateway.toml");
    text.parse().expect("gateway.toml is TOML")
}

/// gateway.toml with every commented-out setting (`#key = ...`,
/// `#[table]`) switched on.
fn config_all_on() -> toml::Table {
    let text = std::fs::read_to_string(deploy_dir().join("gateway.toml")).expect("gateway.toml");
    all_settings_on(&text)
        .parse()
        .expect("gateway.toml with its commented-out settings on is TOML")
}

fn listeners(config: &toml::Table) -> Vec<&toml::Table> {
    config
        .get("listener")
        .and_then(toml::Value::as_array)
        .expect("[[listener]] tables")
        .iter()
        .map(|l| l.as_table().expect("[[listener]] is a table"))
        .collect()
}

fn string<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{key} must be a string in {table:?}"))
}

/// The sample is shaped for production, commented-out settings included:
/// never root, durations and listener settings that read right. Which keys
/// exist is the gateway's own parser's business (it rejects unknown keys):
/// [`the_gateway_accepts_gateway_toml`] runs it on the sample.
#[test]
fn gateway_toml_is_shaped_for_production() {
    for (which, config) in [
        ("as shipped", config()),
        ("all settings on", config_all_on()),
    ] {
        let what = format!("gateway.toml ({which})");
        assert_eq!(
            config.get("allow_root").and_then(toml::Value::as_bool),
            Some(false)
        );
        let table = |key: &str| {
            config
                .get(key)
                .and_then(toml::Value::as_table)
                .unwrap_or_else(|| panic!("{what}: [{key}] table"))
        };
        let shutdown = table("shutdown");
        for key in ["lame_duck", "drain_grace", "abort_grace"] {
            humantime::parse_duration(string(shutdown, key)).expect("a human duration");
        }
        let smtp = table("smtp");
        humantime::parse_duration(string(smtp, "idle_timeout")).expect("a human duration");
        humantime::parse_duration(string(table("imap"), "idle_timeout")).expect("a human duration");
        let log = table("log");
        assert!(["term", "json"].contains(&string(log, "format")));
        let mut names = BTreeSet::new();
        for listener in listeners(&config) {
            assert!(
                names.insert(string(listener, "name")),
                "listener names are unique"
            );
            assert!(["smtp", "imap", "http"].contains(&string(listener, "protocol")));
            string(listener, "address");
            if let Some(tls) = listener.get("tls") {
                assert!(["implicit", "starttls"].contains(&tls.as_str().unwrap_or("")));
                assert!(
                    config.contains_key("tls"),
                    "{what}: tls listener without [tls]"
                );
            }
        }
    }
}

/// The gateway itself (its `--check-config`) accepts the sample, as shipped
/// and with every commented-out setting on: the gateway's own parser owns
/// the schema (unknown keys are errors).
#[test]
fn the_gateway_accepts_gateway_toml() {
    let bin = lifecycle_tests::gateway_bin().expect("build the gateway");
    for (which, config) in [
        ("as shipped", config()),
        ("all settings on", config_all_on()),
    ] {
        let ConfigCheck { accepted, said, .. } =
            check_config(&bin, &config.to_string()).expect("run lifecycle-gateway --check-config");
        assert!(accepted, "gateway.toml ({which}) rejected: {said}");
        assert!(said.contains("configuration ok"), "{which}: {said}");
        println!("gateway.toml ({which}): {}", said.trim());
    }
}

/// Socket activation maps sockets to listeners by FileDescriptorName= and
/// the gateway checks the address: every socket unit names a listener of
/// gateway.toml with the same address, every listener has its socket, and
/// the activated service takes exactly these sockets.
#[test]
fn sockets_match_the_config_listeners() {
    let config = config();
    let mut listener_addrs: Vec<(String, String)> = listeners(&config)
        .iter()
        .map(|l| {
            (
                string(l, "name").to_owned(),
                string(l, "address").to_owned(),
            )
        })
        .collect();
    listener_addrs.sort();
    let sockets = socket_names();
    let mut socket_addrs = Vec::new();
    for name in &sockets {
        let unit = read_unit(name);
        let fd_name = unit
            .value("Socket", "FileDescriptorName")
            .expect("FileDescriptorName=");
        let listen = unit.values("Socket", "ListenStream");
        assert_eq!(listen.len(), 1, "{name}: one socket per name");
        assert_eq!(unit.value("Socket", "Service"), Some(ACTIVATED), "{name}");
        assert_eq!(
            name,
            &format!("lifecycle-gateway-activated-{fd_name}.socket")
        );
        socket_addrs.push((fd_name.to_owned(), listen[0].to_owned()));
    }
    socket_addrs.sort();
    assert_eq!(
        socket_addrs, listener_addrs,
        "(name, address) of sockets vs gateway.toml"
    );

    let service = read_unit(ACTIVATED);
    let mut taken: Vec<&str> = service
        .values("Service", "Sockets")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    taken.sort();
    assert_eq!(taken, sockets, "{ACTIVATED} Sockets=");
    for key in ["Requires", "After"] {
        let listed: BTreeSet<&str> = service
            .values("Unit", key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        for socket in &sockets {
            assert!(
                listed.contains(socket.as_str()),
                "{ACTIVATED} {key}= lacks {socket}"
            );
        }
    }
}

/// TimeoutStopSec= is just above lame_duck + drain_grace + abort_grace: long enough for
/// a graceful stop, short enough that a stuck stop does not hang shutdown.
#[test]
fn stop_timeout_is_just_above_the_graces() {
    let config = config();
    let shutdown = config
        .get("shutdown")
        .and_then(toml::Value::as_table)
        .expect("[shutdown]");
    let grace = |key| humantime::parse_duration(string(shutdown, key)).expect("duration");
    let graces = grace("lame_duck") + grace("drain_grace") + grace("abort_grace");
    for name in [PRIVILEGED, ACTIVATED] {
        let unit = read_unit(name);
        let timeout = unit
            .value("Service", "TimeoutStopSec")
            .expect("TimeoutStopSec=");
        let timeout = humantime::parse_duration(timeout).expect("TimeoutStopSec= is a duration");
        assert!(
            timeout > graces && timeout <= graces + Duration::from_secs(3),
            "{name}: TimeoutStopSec={timeout:?} should be just above lame duck + drain + abort grace {graces:?}"
        );
    }
}

/// The spool is under both services' StateDirectory= (the only writable
/// place under ProtectSystem=strict), and in the privileged mode it belongs
/// to the config's `user`, as the sysusers/tmpfiles snippets create them.
#[test]
fn spool_and_user_match_units_and_snippets() {
    let config = config();
    let spool = string(&config, "spool_dir");
    let user = string(&config, "user");
    for name in [PRIVILEGED, ACTIVATED] {
        let unit = read_unit(name);
        let state = unit
            .value("Service", "StateDirectory")
            .expect("StateDirectory=");
        assert!(
            Path::new(spool).starts_with(Path::new("/var/lib").join(state)),
            "{name}: spool_dir {spool} is outside StateDirectory={state}"
        );
    }
    let sysusers =
        std::fs::read_to_string(deploy_dir().join("sysusers.d/lifecycle-gateway.conf")).unwrap();
    let tmpfiles =
        std::fs::read_to_string(deploy_dir().join("tmpfiles.d/lifecycle-gateway.conf")).unwrap();
    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let users = rows(&sysusers);
    assert!(
        users.iter().any(|r| r[0] == "u" && r[1] == user),
        "sysusers.d creates user {user}"
    );
    let spool_row = rows(&tmpfiles)
        .into_iter()
        .find(|r| r[1] == spool)
        .unwrap_or_else(|| panic!("tmpfiles.d creates {spool}"));
    assert_eq!(
        spool_row[2..5],
        ["0700", user, user],
        "spool mode and owner"
    );
    // systemd re-applies StateDirectoryMode= at every start: it must agree.
    let state_row = rows(&tmpfiles)
        .into_iter()
        .find(|r| r[1] == "/var/lib/lifecycle-gateway")
        .expect("tmpfiles.d creates the state directory");
    let privileged = read_unit(PRIVILEGED);
    assert_eq!(
        privileged.value("Service", "StateDirectoryMode"),
        Some(state_row[2].as_str()),
        "{PRIVILEGED} StateDirectoryMode= vs tmpfiles.d"
    );

    if !require_tool("systemd-sysusers")
        || !require_tool("systemd-tmpfiles")
        || !require_root("creating the service user and spool in a scratch root")
    {
        return;
    }
    let root = temp_dir("sysroot").expect("temp dir");
    std::fs::create_dir(root.path().join("etc")).expect("mkdir etc");
    let root_arg = format!("--root={}", root.path().display());
    for (tool, file, extra) in [
        (
            "systemd-sysusers",
            "sysusers.d/lifecycle-gateway.conf",
            None,
        ),
        (
            "systemd-tmpfiles",
            "tmpfiles.d/lifecycle-gateway.conf",
            Some("--create"),
        ),
    ] {
        let out = Command::new(tool)
            .args(extra)
            .arg(&root_arg)
            .arg(deploy_dir().join(file))
            .output()
            .expect("run tool");
        assert!(
            out.status.success(),
            "{tool} {file}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let entry: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == user)
        .unwrap_or_else(|| panic!("{user} in passwd:\n{passwd}"));
    let (uid, gid): (u32, u32) = (entry[2].parse().unwrap(), entry[3].parse().unwrap());
    assert_ne!(uid, 0, "the service user is not root");
    use std::os::unix::fs::MetadataExt;
    let inside = |p: &str| root.path().join(p.trim_start_matches('/'));
    let spool_meta = std::fs::metadata(inside(spool)).expect("spool created");
    assert_eq!(
        (
            spool_meta.uid(),
            spool_meta.gid(),
            spool_meta.mode() & 0o7777
        ),
        (uid, gid, 0o700)
    );
    let state_meta = std::fs::metadata(inside("/var/lib/lifecycle-gateway")).expect("state dir");
    assert_eq!(
        (state_meta.uid(), state_meta.mode() & 0o7777),
        (0, 0o711),
        "root's, passable"
    );
}
