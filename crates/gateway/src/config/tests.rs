use std::time::Duration;

use super::*;

#[test]
fn empty_file_gives_the_defaults() {
    let c = Config::from_toml("", "x").unwrap();
    // A file names its own service user; only the built-in defaults (no
    // --config) fall back to `nobody` when started as root.
    assert_eq!(c.user(), None);
    assert_eq!(Config::default().user(), Some(DEFAULT_USER));
    let with_default_user = Config::from_toml("user = \"nobody\"", "x").unwrap();
    assert_eq!(with_default_user, Config::default());
    let specs = c.listener_specs();
    let shown: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        shown,
        [
            "smtp (tcp 127.0.0.1:2525)",
            "imap (tcp 127.0.0.1:1143)",
            "http (tcp 127.0.0.1:9090)"
        ]
    );
    assert_eq!(c.spool_dir(), Path::new("spool"));
    assert_eq!(c.shutdown().lame_duck(), Duration::ZERO);
    assert_eq!(c.shutdown().drain_grace(), Duration::from_secs(3));
    assert_eq!(c.shutdown().abort_grace(), Duration::from_secs(1));
    assert_eq!(c.metrics_prefix(), "lifecycle");
    assert_eq!(c.log().level(), LogLevel::Info);
    assert_eq!(c.log().format(), None);
    assert!(!c.allow_root());
    // RFC 5321 §4.5.3.2: 5 min server timeout; 10 min for a DATA transfer.
    assert_eq!(c.smtp().idle_timeout(), Duration::from_secs(300));
    assert_eq!(c.smtp().data_deadline(), Duration::from_secs(600));
    assert_eq!(c.smtp().min_data_rate(), 500);
    assert_eq!(c.smtp().min_data_rate_grace(), Duration::from_secs(30));
    assert_eq!(c.smtp().max_session(), Duration::from_secs(3600));
    assert_eq!(c.smtp().bare_newlines(), crate::BareNewlines::Normalize);
    assert_eq!(c.imap().max_session(), Duration::from_secs(24 * 3600));
}

const FULL: &str = r#"
user = "mail"
allow_root = false
spool_dir = "/var/spool/gw"
metrics_prefix = "gw"

[shutdown]
lame_duck = "10s"
drain_grace = "5s"
abort_grace = "1500ms"

[log]
format = "json"
level = "warn"

[smtp]
hostname = "mx.example.org"
max_message_size = 1048576
max_recipients = 5
idle_timeout = "1m"
data_deadline = "3m"
min_data_rate = 1000
min_data_rate_grace = "10s"
max_session = "30m"
bare_newlines = "reject"

[imap]
idle_timeout = "2m"
max_session = "2h"

[tls]
cert = "/etc/gw/cert.pem"
key = "/etc/gw/key.pem"

[[listener]]
name = "smtp"
protocol = "smtp"
address = "0.0.0.0:25"
backlog = 4096
tls = "starttls"

[[listener]]
name = "imaps"
protocol = "imap"
address = "[::]:993"
tls = "implicit"

[[listener]]
name = "http"
protocol = "http"
address = "unix:/run/gw/http.sock"
"#;

#[test]
fn full_file_is_read_and_printed_back() {
    let c = Config::from_toml(FULL, "full.toml").unwrap();
    assert_eq!(c.user(), Some("mail"));
    assert_eq!(c.shutdown().abort_grace(), Duration::from_millis(1500));
    assert_eq!(c.shutdown().lame_duck(), Duration::from_secs(10));
    assert_eq!(c.shutdown().total(), Duration::from_millis(16_500));
    assert_eq!(c.log().format(), Some(LogFormat::Json));
    assert_eq!(c.log().level(), LogLevel::Warning);
    assert_eq!(c.smtp().max_recipients(), 5);
    assert_eq!(c.smtp().hostname(), "mx.example.org");
    assert_eq!(c.imap().idle_timeout(), Duration::from_secs(120));
    assert_eq!(c.imap().max_session(), Duration::from_secs(7200));
    assert_eq!(c.smtp().data_deadline(), Duration::from_secs(180));
    assert_eq!(c.smtp().min_data_rate(), 1000);
    assert_eq!(c.smtp().min_data_rate_grace(), Duration::from_secs(10));
    assert_eq!(c.smtp().max_session(), Duration::from_secs(1800));
    assert_eq!(c.smtp().bare_newlines(), crate::BareNewlines::Reject);
    assert_eq!(c.tls().unwrap().key(), Path::new("/etc/gw/key.pem"));
    let l = &c.listeners()[0];
    assert_eq!(l.spec().backlog(), 4096);
    assert_eq!(l.tls(), Some(TlsMode::Starttls));
    assert_eq!(
        c.listeners()[2].address(),
        &ListenAddress::Unix("/run/gw/http.sock".into())
    );
    assert_eq!(
        c.listeners()[1].spec().backlog(),
        lifecycle_handoff::DEFAULT_BACKLOG
    );

    let printed = c.to_toml();
    let again = Config::from_toml(&printed, "printed").unwrap();
    assert_eq!(again, c, "printed config:\n{printed}");

    let printed = Config::default().to_toml();
    assert_eq!(
        Config::from_toml(&printed, "printed").unwrap(),
        Config::default(),
        "{printed}"
    );
}

/// Each bad config, the line the error must point at, and words the message
/// must contain.
const BAD: &[(&str, usize, &[&str])] = &[
    ("spool = \"x\"\n", 1, &["unknown field `spool`", "spool_dir"]),
    ("[shutdown]\ndrain = \"3s\"\n", 2, &["unknown field `drain`", "drain_grace"]),
    ("[shutdown]\ndrain_grace = \"3x\"\n", 2, &["drain_grace", "invalid duration `3x`", "\"3s\""]),
    ("[shutdown]\nabort_grace = 5\n", 2, &["abort_grace", "invalid type: integer"]),
    ("[log]\nformat = \"xml\"\n", 2, &["format", "unknown variant `xml`", "`term`", "`json`"]),
    ("[log]\nlevel = \"loud\"\n", 2, &["level", "unknown variant `loud`"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"ftp\"\naddress = \"127.0.0.1:21\"\n", 3, &["unknown variant `ftp`", "smtp"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"localhost:25\"\n", 4, &["address", "not an IP address"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1\"\n", 4, &["no port"]),
    ("[[listener]]\nname = \"\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n", 2, &["name", "empty"]),
    ("[[listener]]\nname = \"a b\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n", 2, &["letters, digits"]),
    (
        "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n\n[[listener]]\nname = \"a\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:143\"\n",
        7,
        &["`a` is already used", "line 2"],
    ),
    (
        "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\n\n[[listener]]\nname = \"b\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:25\"\n",
        9,
        &["address `127.0.0.1:25` is already used by listener `a` on line 4"],
    ),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\n", 1, &["missing field `address`"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nport = 25\n", 5, &["unknown field `port`"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\ntls = \"implicit\"\n", 5, &["no [tls] table"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\ntls = \"implicit\"\n", 5, &["not supported on http"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nbacklog = 0\n", 5, &["backlog", "positive"]),
    ("listener = []\n", 1, &["no listeners"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nproxy_protocol = \"v3\"\ntrusted_proxies = [\"127.0.0.1\"]\n", 5, &["\"v3\"", "\"v1\", \"v2\" or \"any\""]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nproxy_protocol = \"v2\"\n", 5, &["needs `trusted_proxies`", "10.0.0.0/8"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\ntrusted_proxies = [\"127.0.0.1\"]\n", 5, &["without `proxy_protocol`"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nproxy_protocol = \"v2\"\ntrusted_proxies = []\n", 5, &["`trusted_proxies` is empty"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\n  \"lb.example\",\n]\n", 7, &["\"lb.example\"", "not ADDRESS[/PREFIX]"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:25\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n", 6, &["\"10.0.0.0/33\"", "0 to 32"]),
    ("[[listener]]\nname = \"a\"\nprotocol = \"http\"\naddress = \"127.0.0.1:80\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]\n", 5, &["`proxy_protocol` is not supported on http"]),
    ("metrics_prefix = \"9x\"\n", 1, &["metrics_prefix", "not a valid Prometheus"]),
    ("[smtp]\nmax_message_size = 0\n", 2, &["max_message_size", "from 1"]),
    ("[smtp]\nidle_timeout = \"0s\"\n", 2, &["idle_timeout", "longer than zero"]),
    ("[smtp]\ndata_deadline = \"0s\"\n", 2, &["`data_deadline` must be longer than zero", "\"10m\""]),
    ("[smtp]\nmin_data_rate = -1\n", 2, &["`min_data_rate` must be from 0"]),
    ("[smtp]\nmin_data_rate_grace = \"0s\"\n", 2, &["`min_data_rate_grace` must be longer than zero"]),
    ("[smtp]\nbare_newlines = \"strip\"\n", 2, &["unknown variant `strip`", "`normalize`", "`reject`"]),
    ("[imap]\nmax_session = \"0s\"\n", 2, &["`max_session` must be longer than zero", "\"1day\""]),
    ("[tls]\ncert = \"c.pem\"\n", 1, &["missing field `key`"]),
    ("user = \"\"\n", 1, &["`user` is empty"]),
    ("spool_dir = \"a\"\nspool_dir = \"b\"\n", 2, &["duplicate key"]),
    ("[shutdown\n", 1, &["unclosed table"]),
];

#[test]
fn bad_configs_point_at_the_line_and_name_the_problem() {
    for (text, line, words) in BAD {
        let err = Config::from_toml(text, "bad.toml").expect_err(text);
        let shown = err.to_string();
        println!("{shown}\n");
        assert_eq!(err.line(), Some(*line), "wrong line for {text:?}: {shown}");
        assert!(
            shown.starts_with(&format!("bad.toml:{line}:")),
            "{text:?}: {shown}"
        );
        for w in *words {
            assert!(shown.contains(w), "{text:?}: expected {w:?} in: {shown}");
        }
    }
}

#[test]
fn two_listeners_with_port_zero_are_fine() {
    let text = "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\n[[listener]]\nname = \"b\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\n";
    assert_eq!(Config::from_toml(text, "x").unwrap().listeners().len(), 2);
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Config::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("nope.toml"), "{err}");
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[test]
fn proxy_protocol_is_read_and_printed_back() {
    let text = "[[listener]]\nname = \"mx\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1/32\", \"fd00::/8\"]\n";
    let c = Config::from_toml(text, "x").unwrap();
    let proxy = c.listeners()[0].proxy_protocol().unwrap();
    assert_eq!(proxy.version(), actix_lifecycle::ProxyVersion::V2);
    let via = |a: &str| actix_lifecycle::PeerAddr::Tcp(a.parse().unwrap());
    assert!(proxy.is_trusted(&via("127.0.0.1:1")));
    assert!(proxy.is_trusted(&via("[fd12::1]:1")));
    assert!(!proxy.is_trusted(&via("127.0.0.2:1")));
    let printed = c.to_toml();
    assert!(printed.contains("proxy_protocol = \"v2\""), "{printed}");
    assert_eq!(Config::from_toml(&printed, "printed").unwrap(), c);
    let plain = Config::from_toml("", "x").unwrap();
    assert!(plain
        .listeners()
        .iter()
        .all(|l| l.proxy_protocol().is_none()));
}
