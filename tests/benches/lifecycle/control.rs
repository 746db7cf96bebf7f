//! The operator's control socket (privileged start, as root): how long
//! `ctl upgrade --wait` takes to answer (the new generation ready), what a
//! client sees on connect-to-greeting during back-to-back upgrades against
//! the same client in steady state (same run), and `ctl status` latency.
//! Requests are sent in-process on the socket, as `ctl` sends them, so
//! the figures leave out `ctl`'s own exec.
//!
//! A second baseline separates the cost of an upgrade from the cost of a
//! process start on a 2-core machine: the same client while the same
//! binary is exec'd back to back on the side (`--check-config`: exec,
//! dynamic loading, config parsing; no runtime, no listeners) for as long
//! as the upgrades took.
//!
//! `--timeline` prints, per repetition, every connection during the
//! upgrades slower than that repetition's steady-state p99, between the
//! upgrade requests and replies, on stderr, stamped with `CLOCK_MONOTONIC`
//! seconds: the clock of `perf sched record -k CLOCK_MONOTONIC`, so a slow
//! connection can be looked up in a scheduler trace of the same run.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::{Gateway, Mode};
use crate::report::{check_ratio, met, Met, Row};
use crate::stats::{Samples, Unit};
use crate::Res;

/// `ctl status` requests per repetition.
const STATUS_REQUESTS: usize = 200;
/// Back-to-back upgrades per repetition.
const UPGRADES: usize = 5;
/// Connections of the steady-state client per repetition.
const STEADY_CONNECTIONS: usize = 500;

fn ask(socket: &Path, line: &str) -> Res<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply)
}

/// Outcome counts of the load client.
#[derive(Default)]
struct Counts {
    refused: AtomicU64,
    reset: AtomicU64,
}

/// One connect-to-greeting, in milliseconds; `None` counted as a failure.
fn greeting(addr: SocketAddr, counts: &Counts) -> Option<f64> {
    let started = Instant::now();
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            if e.kind() == ErrorKind::ConnectionRefused {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.reset.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 3];
    if (&stream).read_exact(&mut buf).is_err() {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let took = started.elapsed().as_secs_f64() * 1e3;
    // A 220 or a drain's 421: either way the client was answered.
    let _ = (&stream).write_all(b"QUIT\r\n");
    Some(took)
}

/// `CLOCK_MONOTONIC` in seconds (what `perf sched record -k
/// CLOCK_MONOTONIC` stamps its events with); 0 if it cannot be read.
fn monotonic() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0.0, |t| Duration::from(t).as_secs_f64())
}

/// One connection of the load client: when it started (see [`monotonic`])
/// and its connect-to-greeting time in milliseconds.
type Seen = (f64, f64);

/// Runs the load client until `stop` is set; returns its latencies.
fn spawn_client(
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Seen>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = monotonic();
            if let Some(ms) = greeting(addr, &counts) {
                seen.push((started, ms));
            }
        }
        seen
    })
}

/// The `--timeline` listing of one repetition (see the module comment).
fn print_timeline(rep: usize, threshold: f64, upgrades: &[(f64, f64)], during: &[Seen]) {
    let mut lines: Vec<(f64, String)> = Vec::new();
    for &(request, reply) in upgrades {
        lines.push((request, "upgrade requested".to_owned()));
        lines.push((reply, "upgrade answered (new generation ready)".to_owned()));
    }
    let slow = during.iter().filter(|(_, ms)| *ms > threshold);
    lines.extend(slow.map(|&(at, ms)| (at, format!("    connection took {ms:.3} ms"))));
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!(
        "timeline, repetition {rep}: {} connections during the upgrades, those above the \
         steady p99 ({threshold:.3} ms) listed",
        during.len()
    );
    for (at, what) in lines {
        eprintln!("{at:.6} {what}");
    }
}

/// Execs `bin --config config --check-config` back to back for `span`:
/// a process start of the same binary that does not touch the service.
fn exec_on_the_side(bin: &Path, config: &Path, span: Duration) -> Res<usize> {
    let started = Instant::now();
    let mut execs = 0;
    while execs == 0 || started.elapsed() < span {
        let status = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("--check-config")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("{} --check-config failed: {status}", bin.display()).into());
        }
        execs += 1;
    }
    Ok(execs)
}

fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied()
}

pub(crate) fn control_rows(
    sizes: &crate::Sizes,
    gateway_bin: Option<&Path>,
    timeline: bool,
) -> Res<Vec<Row>> {
    let titles = [
        "ctl upgrade --wait: request to reply (new generation ready), privileged",
        "ctl status: request to reply, privileged, idle",
        "connect-to-greeting p50 during back-to-back upgrades",
        "connect-to-greeting p99 during back-to-back upgrades",
    ];
    let why = match gateway_bin {
        None => Some("no lifecycle-gateway binary (build it, or pass --gateway PATH)"),
        Some(_) if !nix::unistd::geteuid().is_root() => Some("needs root (the privileged start)"),
        Some(_) => None,
    };
    let (Some(bin), None) = (gateway_bin, why) else {
        let why = why.unwrap_or_default();
        return Ok(titles
            .iter()
            .map(|t| Row::without_ours(*t, vec![], "", why))
            .collect());
    };
    let mut upgrade = Samples::new(Unit::Millis);
    let mut status = Samples::new(Unit::Millis);
    let (mut p50_up, mut p99_up) = (Samples::new(Unit::Millis), Samples::new(Unit::Millis));
    let (mut p50_steady, mut p99_steady) = (Samples::new(Unit::Millis), Samples::new(Unit::Millis));
    let (mut p50_side, mut p99_side) = (Samples::new(Unit::Millis), Samples::new(Unit::Millis));
    let counts = Arc::new(Counts::default());
    let dir = lifecycle_tests::temp_dir("bench")?;
    for rep in 0..sizes.reps {
        let run = dir.path().join(format!("control-{rep}"));
        std::fs::create_dir(&run)?;
        let socket = run.join("control.sock");
        let extra = format!("control_socket = {:?}\n", socket.display().to_string());
        let (gw, _) = Gateway::start_with(bin, &run, &run.join("spool"), Mode::Privileged, &extra)?;
        for _ in 0..STATUS_REQUESTS {
            let started = Instant::now();
            let reply = ask(&socket, "{\"version\":1,\"command\":\"status\"}\n")?;
            status.push_duration(started.elapsed());
            if !reply.contains("\"ok\":true") {
                return Err(format!("ctl status failed: {reply}").into());
            }
        }
        // Steady state: the same client, no upgrade.
        let mut steady: Vec<f64> = (0..STEADY_CONNECTIONS)
            .filter_map(|_| greeting(gw.smtp, &counts))
            .collect();
        let steady_p99 = percentile(&mut steady, 0.99).unwrap_or(f64::NAN);
        p50_steady.push(percentile(&mut steady, 0.50).unwrap_or(f64::NAN));
        p99_steady.push(steady_p99);
        // Back-to-back upgrades with the client running.
        let stop = Arc::new(AtomicBool::new(false));
        let client = spawn_client(gw.smtp, counts.clone(), stop.clone());
        let upgrades_began = Instant::now();
        let mut requests = Vec::with_capacity(UPGRADES);
        for _ in 0..UPGRADES {
            let (started, requested) = (Instant::now(), monotonic());
            let reply = ask(
                &socket,
                "{\"version\":1,\"command\":\"upgrade\",\"wait\":true}\n",
            )?;
            upgrade.push_duration(started.elapsed());
            requests.push((requested, monotonic()));
            if !reply.contains("\"ok\":true") {
                return Err(format!("ctl upgrade --wait failed: {reply}").into());
            }
        }
        let upgrades_took = upgrades_began.elapsed();
        stop.store(true, Ordering::Relaxed);
        let seen = client.join().map_err(|_| "the load client panicked")?;
        if timeline {
            print_timeline(rep, steady_p99, &requests, &seen);
        }
        let mut during: Vec<f64> = seen.iter().map(|(_, ms)| *ms).collect();
        p50_up.push(percentile(&mut during, 0.50).unwrap_or(f64::NAN));
        p99_up.push(percentile(&mut during, 0.99).unwrap_or(f64::NAN));
        // The same client while the same binary starts on the side, for as
        // long as the upgrades took.
        let stop = Arc::new(AtomicBool::new(false));
        let client = spawn_client(gw.smtp, counts.clone(), stop.clone());
        let side = exec_on_the_side(bin, &run.join("gateway.toml"), upgrades_took);
        stop.store(true, Ordering::Relaxed);
        let beside = client.join().map_err(|_| "the load client panicked")?;
        let mut beside: Vec<f64> = beside.iter().map(|(_, ms)| *ms).collect();
        side?;
        p50_side.push(percentile(&mut beside, 0.50).unwrap_or(f64::NAN));
        p99_side.push(percentile(&mut beside, 0.99).unwrap_or(f64::NAN));
        gw.stop()?;
    }
    let (refused, reset) = (
        counts.refused.load(Ordering::Relaxed),
        counts.reset.load(Ordering::Relaxed),
    );
    let summary = |s: &Samples| s.summary().ok_or("no figures");
    let (upgrade, status) = (summary(&upgrade)?, summary(&status)?);
    let (p50_up, p99_up) = (summary(&p50_up)?, summary(&p99_up)?);
    let (p50_steady, p99_steady) = (summary(&p50_steady)?, summary(&p99_steady)?);
    let (p50_side, p99_side) = (summary(&p50_side)?, summary(&p99_side)?);
    let side = "steady state while the same binary is exec'd back to back on the side";
    let failures = if refused == 0 && reset == 0 {
        Ok(())
    } else {
        Err(format!("{refused} refused, {reset} reset"))
    };
    Ok(vec![
        Row {
            what: titles[0].into(),
            ours: Some(upgrade),
            baselines: vec![],
            target: String::new(),
            paired: Vec::new(),
            met: Met::Report,
        },
        Row {
            what: titles[1].into(),
            ours: Some(status),
            baselines: vec![],
            target: String::new(),
            paired: Vec::new(),
            met: Met::Report,
        },
        Row {
            what: titles[2].into(),
            ours: Some(p50_up),
            baselines: vec![
                ("steady state p50, same client".into(), p50_steady),
                (format!("{side}, p50"), p50_side),
            ],
            target: "0 refused, 0 reset".into(),
            paired: Vec::new(),
            met: met(vec![failures.clone()]),
        },
        Row {
            what: titles[3].into(),
            ours: Some(p99_up),
            baselines: vec![
                ("steady state p99, same client".into(), p99_steady),
                (format!("{side}, p99"), p99_side),
            ],
            target: "≤ 2× steady state, 0 refused, 0 reset".into(),
            paired: Vec::new(),
            met: met(vec![
                check_ratio(&p99_up, &p99_steady, 2.0, "steady state p99"),
                failures,
            ]),
        },
    ])
}
