//! Admission control (issue 14): a flood from one address, a listener cap
//! and a rate cap, against the real gateway. Exact counts: who was
//! greeted, who got the busy reply and was closed by the server, and the
//! gauges and refusal counters. Latencies are printed, not asserted (a
//! loaded 2-core machine makes any wall-clock bound flaky).

use std::time::{Duration, Instant};

use lifecycle_tests::{metric_value, GatewayProcess};

use super::{assert_no_panic, figure, gateway, kv, scaled, turn, LoadClient};

/// `lifecycle_<name>{listener="smtp",protocol="smtp"[,reason=..]}`.
fn smtp_metric(gw: &GatewayProcess, name: &str, reason: Option<&str>) -> f64 {
    let metrics = gw.metrics().expect("metrics");
    let mut labels = vec![("listener", "smtp"), ("protocol", "smtp")];
    if let Some(r) = reason {
        labels.push(("reason", r));
    }
    metric_value(&metrics, name, &labels).unwrap_or(-1.0)
}

/// Waits until the smtp gauge shows `live` (sessions closed by the client
/// are unregistered as the server notices).
fn wait_live(gw: &GatewayProcess, live: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = smtp_metric(gw, "lifecycle_connections", None);
        if now == live || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Flood {
    report: String,
    busy_line: String,
    client: LoadClient,
}

fn flood(gw: &GatewayProcess, n: usize, mode: &str, side: Option<&str>) -> Flood {
    let mut args = vec![
        "flood".into(),
        gw.smtp.to_string(),
        n.to_string(),
        mode.into(),
    ];
    if let Some(ip) = side {
        args.push(format!("side={ip}"));
    }
    let mut client = LoadClient::spawn(&args);
    let report = client.expect("flood ", Duration::from_secs(300));
    let busy_line = client.expect("flood-busy-line", Duration::from_secs(10));
    Flood {
        report,
        busy_line,
        client,
    }
}

const BUSY: &str = "flood-busy-line 421 4.7.0 gw.test too many connections, try again later";

#[test]
fn a_flood_from_one_address_gets_its_share_and_others_get_in() {
    let _turn = turn();
    const PER_ADDRESS: usize = 100;
    let n = scaled(4_000).max(2 * PER_ADDRESS);
    let gw = GatewayProcess::builder(gateway())
        .limits("max_connections = 0\nmax_per_address = 100")
        .start()
        .expect("start the gateway");
    let f = flood(&gw, n, "hold", Some("127.0.0.2"));
    let live = wait_live(&gw, PER_ADDRESS as f64);
    let refused = smtp_metric(&gw, "lifecycle_refused_total", Some("address_full"));
    let accepted = smtp_metric(&gw, "lifecycle_connections_accepted_total", None);
    figure(
        "admission_flood",
        &format!(
            "{n} connections from 127.0.0.1, max_per_address={PER_ADDRESS}: {}; live={live} \
             refused{{address_full}}={refused} accepted={accepted}",
            f.report
        ),
    );
    let r = &f.report;
    assert_eq!(kv(r, "greeted"), PER_ADDRESS as u64, "{r}");
    assert_eq!(kv(r, "busy"), (n - PER_ADDRESS) as u64, "{r}");
    assert_eq!(
        kv(r, "busy_closed"),
        (n - PER_ADDRESS) as u64,
        "closed by the server: {r}"
    );
    assert_eq!(kv(r, "other"), 0, "{r}");
    assert_eq!(
        kv(r, "side_greeted"),
        1,
        "a client from 127.0.0.2 is greeted: {r}"
    );
    assert_eq!(f.busy_line, BUSY);
    assert_eq!(live, PER_ADDRESS as f64, "gauge");
    assert_eq!(refused, (n - PER_ADDRESS) as f64, "refusal counter");
    assert_eq!(
        accepted,
        (PER_ADDRESS + 1) as f64,
        "registered: the held ones and the side client"
    );
    f.client.finish();
    assert_no_panic(&gw);
}

#[test]
fn the_listener_cap_and_the_rate_cap_are_exact() {
    let _turn = turn();
    const CAP: usize = 50;
    let n = scaled(1_000).max(2 * CAP);
    let gw = GatewayProcess::builder(gateway())
        .limits("max_connections = 50\nmax_per_address = 0")
        .start()
        .expect("start the gateway");
    let f = flood(&gw, n, "hold", None);
    let live = wait_live(&gw, CAP as f64);
    let refused = smtp_metric(&gw, "lifecycle_refused_total", Some("listener_full"));
    figure(
        "admission_listener_cap",
        &format!("{n} connections, max_connections={CAP}: {}; live={live} refused{{listener_full}}={refused}", f.report),
    );
    let r = &f.report;
    assert_eq!(kv(r, "greeted"), CAP as u64, "{r}");
    assert_eq!(kv(r, "busy"), (n - CAP) as u64, "{r}");
    assert_eq!(kv(r, "busy_closed"), (n - CAP) as u64, "{r}");
    assert_eq!(f.busy_line, BUSY);
    assert_eq!(live, CAP as f64);
    assert_eq!(refused, (n - CAP) as f64);
    f.client.finish();
    assert_no_panic(&gw);
    drop(gw);

    // A rate of 20 an hour per network: each client closes right after the
    // greeting (so no count limit is near), still only 20 get in.
    const RATE: usize = 20;
    let n = scaled(200).max(2 * RATE);
    let gw = GatewayProcess::builder(gateway())
        .limits("max_connections = 0\nmax_per_address = 0\nrate_per_address = \"20/h\"")
        .start()
        .expect("start the gateway");
    let f = flood(&gw, n, "close", None);
    let refused = smtp_metric(&gw, "lifecycle_refused_total", Some("rate"));
    let accepted = smtp_metric(&gw, "lifecycle_connections_accepted_total", None);
    let live = wait_live(&gw, 0.0);
    figure(
        "admission_rate_cap",
        &format!("{n} connections, rate_per_address=20/h: {}; accepted={accepted} refused{{rate}}={refused} live after={live}", f.report),
    );
    let r = &f.report;
    assert_eq!(kv(r, "greeted"), RATE as u64, "{r}");
    assert_eq!(kv(r, "busy"), (n - RATE) as u64, "{r}");
    assert_eq!(kv(r, "busy_closed"), (n - RATE) as u64, "{r}");
    assert_eq!(f.busy_line, BUSY);
    assert_eq!(accepted, RATE as f64);
    assert_eq!(refused, (n - RATE) as f64);
    assert_eq!(live, 0.0);
    f.client.finish();
    assert_no_panic(&gw);
}
