//! The row groups that run the gateway binary (or the baselines it is
//! held against) as a process: start and stop, SMTP delivery, memory per
//! DATA session.

use super::summaries;
use crate::client::LoadClient;
use crate::report::{check_abs, met, Met, Row};
use crate::stats::{Samples, Unit};
use crate::{data_memory, gateway, smtp_sink, start, Res, Sizes};
use gateway::Mode;
use std::path::Path;
use std::time::Duration;

/// Pause between the gateway's greeting and SIGTERM, so the greeting
/// connection is gone and the service is idle (not measured).
const SETTLE: Duration = Duration::from_millis(100);

/// Start (exec to SMTP greeting) and stop (SIGTERM to exit, idle) of the
/// gateway in each mode, interleaved with an exec of `/bin/true`.
/// Privileged mode needs root.
pub(crate) fn start_stop_rows(sizes: &Sizes, gateway_bin: Option<&Path>) -> Res<Vec<Row>> {
    let Some(trivial) = start::trivial_binary() else {
        return Err("no /bin/true or /usr/bin/true for the start baseline".into());
    };
    let mut modes = vec![(Mode::Immediate, "immediate")];
    let root = nix::unistd::geteuid().is_root();
    if root {
        modes.push((Mode::Privileged, "privileged, user nobody"));
    }
    let mut exec = Samples::new(Unit::Millis);
    let mut starts = vec![Samples::new(Unit::Millis); modes.len()];
    let mut stops = vec![Samples::new(Unit::Millis); modes.len()];
    let mut failures: Vec<Option<String>> = vec![None; modes.len()];
    let dir = lifecycle_tests::temp_dir("bench")?;
    for rep in 0..sizes.reps {
        exec.push_duration(start::exec_to_exit(trivial)?);
        let Some(bin) = gateway_bin else { continue };
        for (m, (mode, _)) in modes.iter().enumerate() {
            if failures[m].is_some() {
                continue;
            }
            let run = dir.path().join(format!("start-{rep}-{m}"));
            std::fs::create_dir(&run)?;
            let spool = run.join("spool");
            match gateway::Gateway::start(bin, &run, &spool, *mode) {
                Ok((gw, took)) => {
                    starts[m].push_duration(took);
                    std::thread::sleep(SETTLE);
                    match gw.stop() {
                        Ok(took) => stops[m].push_duration(took),
                        Err(e) => failures[m] = Some(one_line(&format!("stop failed: {e}"))),
                    }
                }
                Err(e) => failures[m] = Some(one_line(&format!("start failed: {e}"))),
            }
        }
    }
    let baselines = summaries(&["exec of /bin/true"], &[exec]);
    let mut rows = Vec::new();
    for (m, (_, label)) in modes.iter().enumerate() {
        let why = match (gateway_bin, &failures[m]) {
            (None, _) => Some(NO_GATEWAY.to_string()),
            (Some(_), Some(f)) => Some(f.clone()),
            _ => None,
        };
        let start_what = format!("start: gateway exec to SMTP greeting, {label}");
        let stop_what = format!("stop: gateway SIGTERM to exit (status 0), idle, {label}");
        let (Some(start), Some(stop), None) = (starts[m].summary(), stops[m].summary(), &why)
        else {
            let why = why.unwrap_or_else(|| "no figures".into());
            rows.push(Row::without_ours(
                start_what,
                baselines.clone(),
                "≤ 50 ms",
                why.clone(),
            ));
            rows.push(Row::without_ours(stop_what, vec![], STOP_TARGET, why));
            continue;
        };
        rows.push(Row {
            what: start_what,
            ours: Some(start),
            baselines: baselines.clone(),
            target: "≤ 50 ms".into(),
            paired: Vec::new(),
            met: met(vec![check_abs(&start, 50.0, "exec to ready")]),
        });
        rows.push(Row {
            what: stop_what,
            ours: Some(stop),
            baselines: vec![],
            target: STOP_TARGET.into(),
            paired: Vec::new(),
            met: met(vec![check_abs(&stop, 50.0, "SIGTERM to exit")]),
        });
    }
    if !root {
        rows.push(Row::without_ours(
            "start: gateway exec to SMTP greeting, privileged",
            baselines,
            "≤ 50 ms",
            "needs root (the bench is not running as root)",
        ));
    }
    Ok(rows)
}

const STOP_TARGET: &str = "≤ 50 ms (mox waits ≥ 1 s)";

/// SMTP messages/s: the gateway (fsync'd spool) interleaved with the
/// no-fsync sink; both spool into the same file system.
pub(crate) fn smtp_row(
    client: &mut LoadClient,
    sizes: &Sizes,
    gateway_bin: Option<&Path>,
) -> Res<Row> {
    let dir = lifecycle_tests::temp_dir("bench")?;
    let mut sink = Samples::new(Unit::PerSecond);
    let mut ours = Samples::new(Unit::PerSecond);
    let mut failure = None;
    let total = (sizes.smtp_clients * sizes.smtp_messages_per_client) as u64;
    let load = |client: &mut LoadClient, addr| {
        client.smtp(
            addr,
            sizes.smtp_clients,
            sizes.smtp_messages_per_client,
            sizes.smtp_message_size,
        )
    };
    for rep in 0..sizes.reps {
        for turn in crate::rotate(2, rep) {
            let run = dir.path().join(format!("smtp-{rep}-{turn}"));
            std::fs::create_dir(&run)?;
            let spool = run.join("spool");
            if turn == 0 {
                std::fs::create_dir(&spool)?;
                let server = smtp_sink::start(spool.clone())?;
                let took = load(client, server.addr);
                server.stop()?;
                sink.push_rate(
                    total,
                    took.map_err(|e| format!("smtp, no-fsync sink: {e}"))?,
                );
                check_spooled(&spool, total, "no-fsync sink")?;
            } else if let (Some(bin), None) = (gateway_bin, &failure) {
                let result = gateway::Gateway::start(bin, &run, &spool, Mode::Immediate).and_then(
                    |(gw, _)| {
                        let server = gw.into_running();
                        let took = load(client, server.addr);
                        server.stop()?;
                        let took = took?;
                        check_spooled(&spool, total, "gateway")?;
                        Ok(took)
                    },
                );
                match result {
                    Ok(took) => ours.push_rate(total, took),
                    Err(e) => failure = Some(one_line(&format!("gateway: {e}"))),
                }
            }
        }
    }
    let what = format!(
        "SMTP: messages/s, {} clients × {} messages of {} KiB, gateway with fsync'd spool",
        sizes.smtp_clients,
        sizes.smtp_messages_per_client,
        sizes.smtp_message_size / 1024
    );
    let baselines = summaries(&["sink without fsync"], &[sink]);
    match (gateway_bin, failure, ours.summary()) {
        (None, _, _) => Ok(Row::without_ours(
            what,
            baselines,
            "report the ratio",
            NO_GATEWAY,
        )),
        (Some(_), Some(f), _) => Ok(Row::without_ours(what, baselines, "report the ratio", f)),
        (Some(_), None, summary) => Ok(Row {
            what,
            ours: summary,
            baselines,
            target: "report the ratio".into(),
            paired: Vec::new(),
            met: Met::Report,
        }),
    }
}

/// Memory of a session in DATA (issue 14): resident bytes of the gateway
/// per session while N sessions are each mid-transfer, against the same N
/// sessions idle (greeted), each on a fresh gateway.
pub(crate) fn data_memory_row(sizes: &Sizes, gateway_bin: Option<&Path>) -> Res<Row> {
    let (n, size) = (sizes.data_sessions, sizes.data_size);
    let what = format!(
        "memory of a session in DATA: serving process VmRSS growth per session, \
         {n} sessions each {} KiB into DATA at once (no final dot yet)",
        size >> 10
    );
    // Issue 14: 200 sessions mid-DATA within idle RSS + 64 MiB.
    let bound = (64 << 20) as f64 / 200.0;
    let target = "≤ 64 MiB / 200 (327.7 KiB)";
    let Some(bin) = gateway_bin else {
        return Ok(Row::without_ours(what, vec![], target, NO_GATEWAY));
    };
    let dir = lifecycle_tests::temp_dir("bench")?;
    let mut in_data = Samples::new(Unit::Bytes);
    let mut idle = Samples::new(Unit::Bytes);
    for rep in 0..sizes.data_reps {
        let run = dir.path().join(format!("data-{rep}"));
        std::fs::create_dir(&run)?;
        let m = data_memory::per_session(bin, &run, n, size)
            .map_err(|e| one_line(&format!("gateway: {e}")))?;
        in_data.push(m.in_data);
        idle.push(m.idle);
        // Each repetition leaves n × size bytes of spool behind.
        std::fs::remove_dir_all(&run)?;
    }
    let ours = in_data.summary().ok_or("no DATA memory figures")?;
    Ok(Row {
        what,
        ours: Some(ours),
        baselines: summaries(&[&format!("the same {n} sessions idle (greeted)")], &[idle]),
        target: target.into(),
        paired: Vec::new(),
        met: met(vec![check_abs(&ours, bound, "bytes per session in DATA")]),
    })
}

/// The spool must hold exactly one `.eml` file per message sent.
fn check_spooled(spool: &Path, expected: u64, who: &str) -> Res<()> {
    let found = std::fs::read_dir(spool)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .count() as u64;
    if found != expected {
        return Err(format!(
            "{who} spooled {found} messages in {}, {expected} were sent",
            spool.display()
        )
        .into());
    }
    Ok(())
}

const NO_GATEWAY: &str = "no lifecycle-gateway binary (build it, or pass --gateway PATH)";

/// The first line of an error, for a table cell.
fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let mut s: String = first.chars().take(200).collect();
    if s.len() < first.len() {
        s.push('…');
    }
    s.replace('|', "/")
}
