//! The metrics text passes `promtool check metrics` and has the documented
//! names, labels and types.

use std::io::Write;
use std::process::{Command, Stdio};

use actix_lifecycle::ConnectionRegistry;
use prometheus::Encoder;

fn text(registry: &prometheus::Registry) -> String {
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn label_sets_appear_on_first_use_with_the_documented_names() {
    let metrics = prometheus::Registry::new();
    let registry = ConnectionRegistry::builder()
        .metrics(&metrics)
        .prefix("mail")
        .build()
        .unwrap();
    let h = registry.handle();
    let smtp = h.kind("smtp", "mx");
    let _unused = h.kind("imap", "imap");
    assert_eq!(text(&metrics), "", "nothing before first use");

    let shard = h.new_shard();
    let a = shard.register(&smtp);
    let b = shard.register(&smtp);
    drop(a);
    h.shutdown();
    let t = text(&metrics);
    for line in [
        "# TYPE mail_connections gauge",
        r#"mail_connections{listener="mx",protocol="smtp"} 1"#,
        "# TYPE mail_connections_accepted_total counter",
        r#"mail_connections_accepted_total{listener="mx",protocol="smtp"} 2"#,
        "# TYPE mail_connections_aborted_total counter",
        r#"mail_connections_aborted_total{listener="mx",protocol="smtp"} 1"#,
        "# TYPE mail_connection_duration_seconds histogram",
        r#"mail_connection_duration_seconds_count{listener="mx",protocol="smtp"} 1"#,
        r#"mail_connection_duration_seconds_bucket{listener="mx",protocol="smtp",le="+Inf"} 1"#,
    ] {
        assert!(t.lines().any(|l| l == line), "missing {line:?} in:\n{t}");
    }
    assert!(
        !t.contains("imap"),
        "a kind never used has no label set:\n{t}"
    );
    drop(b);
    assert!(text(&metrics).contains(r#"mail_connections{listener="mx",protocol="smtp"} 0"#));
}

#[test]
fn promtool_accepts_the_metrics() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("SKIP: promtool not installed");
        return;
    }
    let metrics = prometheus::Registry::new();
    let registry = ConnectionRegistry::builder()
        .metrics(&metrics)
        .build()
        .unwrap();
    let h = registry.handle();
    let shard = h.new_shard();
    let _live = shard.register(&h.kind("smtp", "smtp"));
    drop(shard.register(&h.kind("imap", "imap")));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text(&metrics).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
