//! Deadlines that end a session however busy the client keeps it: the DATA
//! deadline, the minimum data rate, the session lifetime. Paused time: the
//! clock moves only when everything waits.

use super::*;
use crate::session::Cut;

fn counted(registry: &prometheus::Registry) -> Vec<(String, String)> {
    let family = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "t_sessions_cut_total")
        .unwrap();
    family
        .get_metric()
        .iter()
        .filter(|m| m.get_counter().get_value() > 0.0)
        .map(|m| {
            let l = m.get_label();
            (l[0].value().to_owned(), l[1].value().to_owned())
        })
        .collect()
}

/// Sends one byte a second after `354` until the session ends; returns
/// the last reply and how many bytes went.
async fn drip(s: &Setup, ctx: SmtpContext) -> (String, u32, SessionSummary) {
    let (mut c, task) = s.start(ctx);
    hello(&mut c).await;
    c.start_data().await;
    let (rd, mut wr) = tokio::io::split(c.io);
    let dripper = tokio::spawn(async move {
        let mut sent = 0u32;
        loop {
            if wr.write_all(b"d").await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if sent > 10_000 {
                return sent;
            }
        }
    });
    let mut rd = BufReader::new(rd);
    let mut reply = String::new();
    rd.read_line(&mut reply).await.unwrap();
    let summary = task.await.unwrap();
    dripper.abort();
    let sent = dripper.await.unwrap_or(0);
    (reply, sent, summary)
}

#[tokio::test(start_paused = true)]
async fn a_slow_drip_is_cut_by_the_minimum_rate_after_the_grace() {
    let s = Setup::new();
    let registry = prometheus::Registry::new();
    let metrics = crate::metrics::GatewayMetrics::register(&registry, "t").unwrap();
    let ctx = s
        .ctx()
        .idle_timeout(Duration::from_secs(300))
        .data_deadline(Duration::from_secs(600))
        .min_data_rate(100, Duration::from_secs(20))
        .metrics(metrics);
    let started = tokio::time::Instant::now();
    let (reply, _, summary) = drip(&s, ctx).await;
    let took = started.elapsed();
    println!("cut after {took:?} (virtual): {reply:?}");
    assert_eq!(
        reply,
        "421 4.4.2 test.example data rate below 100 octets per second, closing connection\r\n"
    );
    assert_eq!(summary.reason, EndReason::Cut(Cut::MinDataRate));
    assert!(
        took >= Duration::from_secs(20) && took < Duration::from_secs(22),
        "{took:?}"
    );
    assert!(s.messages().is_empty());
    assert_eq!(s.tmp_files(), 0);
    assert_eq!(
        counted(&registry),
        vec![("smtp".into(), "min_data_rate".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_transfer_is_cut_at_the_data_deadline() {
    let s = Setup::new();
    let ctx = s
        .ctx()
        .idle_timeout(Duration::from_secs(300))
        .data_deadline(Duration::from_secs(45))
        .min_data_rate(0, Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let (reply, sent, summary) = drip(&s, ctx).await;
    println!(
        "cut after {:?} (virtual), {sent} bytes: {reply:?}",
        started.elapsed()
    );
    assert_eq!(
        reply,
        "421 4.4.2 test.example data deadline of 45s exceeded, closing connection\r\n"
    );
    assert_eq!(summary.reason, EndReason::Cut(Cut::DataDeadline));
    assert!(s.messages().is_empty());
    assert_eq!(s.tmp_files(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fast_enough_transfer_is_not_cut() {
    let s = Setup::new();
    // 100 octets a second against a minimum of 50: never cut, however long.
    let (mut c, task) = s.start(
        s.ctx()
            .data_deadline(Duration::from_secs(600))
            .min_data_rate(50, Duration::from_secs(5)),
    );
    hello(&mut c).await;
    c.start_data().await;
    let line = format!("{}\r\n", "r".repeat(98));
    for _ in 0..60 {
        c.send(&line).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    c.send(".\r\nQUIT\r\n").await;
    c.expect("250 2.0.0").await;
    c.expect("221").await;
    assert_eq!(task.await.unwrap().messages, 1);
}

#[tokio::test(start_paused = true)]
async fn a_busy_session_is_cut_at_its_lifetime() {
    let s = Setup::new();
    let (mut c, task) = s.start(
        s.ctx()
            .idle_timeout(Duration::from_secs(60))
            .max_session(Duration::from_secs(300)),
    );
    hello(&mut c).await;
    // A NOOP every 45 s never lets the idle timeout fire.
    let mut noops = 0;
    let last = loop {
        tokio::time::sleep(Duration::from_secs(45)).await;
        // After the cut the write fails; the reply is still there to read.
        let _ = c.io.get_mut().write_all(b"NOOP\r\n").await;
        let r = c.reply().await;
        if !r.starts_with("250") {
            break r;
        }
        noops += 1;
    };
    assert_eq!(
        last,
        "421 4.4.2 test.example session lifetime exceeded, closing connection\r\n"
    );
    assert_eq!(noops, 6, "cut at 300 s, after the NOOPs at 45..270 s");
    assert_eq!(task.await.unwrap().reason, EndReason::Cut(Cut::MaxSession));
}
