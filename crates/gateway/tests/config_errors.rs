//! Configuration errors through the real binary: each bad file gives a
//! message naming the file, line and problem, and exit status 2 (when
//! starting and with --check-config); nothing is bound.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// (config text, line the message must point at, words it must contain)
const BAD: &[(&str, usize, &[&str])] = &[
    ("spool = \"/var/spool\"\n", 1, &["unknown field `spool`", "`spool_dir`"]),
    ("[shutdown]\ndrain_grace = \"3 parsecs\"\n", 2, &["drain_grace", "invalid duration"]),
    ("[shutdown]\nabort_grace = 1\n", 2, &["abort_grace", "invalid type: integer"]),
    ("[log]\nformat = \"xml\"\n", 2, &["unknown variant `xml`", "`term` or `json`"]),
    ("[log]\nlevel = \"chatty\"\n", 2, &["level", "unknown variant `chatty`"]),
    ("[[listener]]\nname = \"smtp\"\nprotocol = \"pop3\"\naddress = \"127.0.0.1:110\"\n", 3, &["unknown variant `pop3`"]),
    ("[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"mail.example.org:25\"\n", 4, &["not an IP address"]),
    ("[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"::1:25\"\n", 4, &["needs brackets", "[::1]:25"]),
    ("[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:70000\"\n", 4, &["port `70000`"]),
    ("[[listener]]\nname = \"\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n", 2, &["`name` is empty"]),
    (
        "[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n[[listener]]\nname = \"smtp\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:143\"\n",
        6,
        &["`smtp` is already used by the listener on line 2"],
    ),
    (
        "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n[[listener]]\nname = \"b\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n",
        8,
        &["already used by listener `a` on line 4"],
    ),
    ("[[listener]]\nname = \"s\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\ntls = \"starttls\"\n", 5, &["no [tls] table"]),
    ("[[listener]]\nname = \"s\"\nprotocol = \"smtp\"\n", 1, &["missing field `address`"]),
    ("listener = []\n", 1, &["no listeners"]),
    ("[smtp]\nmax_recipients = 0\n", 2, &["max_recipients"]),
    ("user = \"mail\"\nuser = \"root\"\n", 2, &["duplicate key"]),
    ("[shutdown\ndrain_grace = \"1s\"\n", 1, &["unclosed table"]),
];

#[test]
fn each_bad_config_is_explained_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, line, words)) in BAD.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        for args in [
            vec!["--config", path],
            vec!["--config", path, "--check-config"],
        ] {
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {text:?}: {stderr}");
            let located = format!("lifecycle-gateway: {path}:{line}:");
            assert!(
                stderr.starts_with(&located),
                "{text:?}: expected {located:?} in {stderr}"
            );
            for w in *words {
                assert!(stderr.contains(w), "{text:?}: expected {w:?} in {stderr}");
            }
            assert!(out.stdout.is_empty(), "nothing on stdout for a bad config");
        }
    }
    assert!(BAD.len() >= 10);
}

#[test]
fn a_missing_file_and_a_bad_flag_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = run(&["--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read config file") && stderr.contains("nope.toml"),
        "{stderr}"
    );

    let out = run(&["--confgi", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--confgi"));
}

#[test]
fn printed_config_checks_clean_and_help_explains_the_flags() {
    let out = run(&["--print-config"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("address = \"127.0.0.1:2525\""),
        "{printed}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printed.toml");
    std::fs::write(&path, &printed).unwrap();
    let out = run(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8(out.stdout).unwrap();
    assert!(
        summary.contains("configuration ok; 3 listener(s)"),
        "{summary}"
    );

    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    for flag in ["--config <FILE>", "--print-config", "--check-config"] {
        assert!(help.contains(flag), "{help}");
    }
}

/// Started as root, the gateway runs the service as `user`; without one it
/// refuses unless `allow_root = true`, before binding anything.
#[test]
fn root_without_a_user_is_refused_and_an_unknown_user_too() {
    if !lifecycle_tests::require_root("starting the gateway as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener =
        "[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\n";
    let cases = [
        ("", "refusing to run the service as root"),
        (
            "user = \"root\"\n",
            "refusing to run the service as root (user root",
        ),
        ("user = \"no-such-user-here\"\n", "no-such-user-here"),
    ];
    for (i, (head, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("root{i}.toml"));
        std::fs::write(&path, format!("{head}{listener}")).unwrap();
        let out = run(&["--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{head:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{head:?}: expected {expect:?} in {stderr}"
        );
        assert!(
            !stderr.contains("listener bound"),
            "refused before binding: {stderr}"
        );
    }
}

/// The sample production config in `deploy/` is accepted by the real
/// parser, as shipped and with every commented-out setting switched on.
#[test]
fn the_deploy_sample_config_checks_clean() {
    let sample = lifecycle_tests::workspace_root().join("deploy/gateway.toml");
    let Ok(text) = std::fs::read_to_string(&sample) else {
        lifecycle_tests::loud("SKIP: deploy/gateway.toml not found; the sample was not checked");
        return;
    };
    let all_on = lifecycle_tests::all_settings_on(&text);
    for (name, text) in [("as shipped", text), ("all settings on", all_on)] {
        let check = lifecycle_tests::check_config(Path::new(BIN), &text).unwrap();
        assert!(check.accepted, "{name}: {}", check.said);
    }
}
