//! The lifecycle bench: what actix-lifecycle costs, against baselines
//! measured in the same run (issue 9).
//!
//! `cargo bench -p lifecycle-tests --bench lifecycle` runs every scenario
//! at full size; `scripts/bench` runs it and rewrites `BENCHMARKS.md`.
//! Under `cargo test` (no `--bench` argument) it runs each scenario once
//! at a small size, as a smoke test that the bench still works.
//!
//! The load client is this executable again, started with
//! `LIFECYCLE_BENCH_ROLE=load-client`, in its own process on a 2-thread
//! runtime. Servers (ours and baselines) serve on one thread each, on
//! listeners with an explicit backlog of 1024. Contenders are interleaved
//! (the order rotates every repetition) and reported as median, min, max.
//!
//! Options (after `--` with cargo bench):
//! `--reps N`, `--only registry,accept,abort,memory,start,smtp,control,data,idle`,
//! `--report FILE` (write the Markdown table there),
//! `--gateway PATH` (the lifecycle-gateway binary; default: next to the
//! bench's own target directory), `--no-gateway` (leave its rows out),
//! `--data-sessions N` (sessions held in DATA at once, default 200),
//! `--timeline` (the control rows list their slow connections next to
//! the upgrades on stderr; see `control.rs`).

mod abort;
mod accept;
mod client;
mod control;
mod data_memory;
mod gateway;
mod idle;
mod listen;
mod memory;
mod ours;
mod registry;
mod report;
mod scenarios;
mod smtp_sink;
mod start;
mod stats;

use report::{Met, Row};
use std::path::PathBuf;

/// Counts allocations for the memory scenario only (off otherwise).
#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting::new();

/// Errors of the bench: reported with their context, then exit 1.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Joins a server thread, turning its panic or error into ours.
pub(crate) fn join(thread: std::thread::JoinHandle<Res<()>>) -> Res<()> {
    thread
        .join()
        .map_err(|_| "server thread panicked")?
        .map_err(|e| format!("server thread failed: {e}"))?;
    Ok(())
}

/// Starts a server thread named `srv-<name>` (so profiles can tell the
/// contenders apart: `perf report --sort comm`).
pub(crate) fn spawn_named(
    name: &str,
    f: impl FnOnce() -> Res<()> + Send + 'static,
) -> Res<std::thread::JoinHandle<Res<()>>> {
    Ok(std::thread::Builder::new()
        .name(format!("srv-{name}"))
        .spawn(f)?)
}

/// Contender order for repetition `rep`: rotates so none always goes first.
pub(crate) fn rotate(n: usize, rep: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + rep) % n)
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    reps: usize,
    /// Repetitions of the accept path: a run is short (10,000 connections,
    /// about 0.3 s), and its rows compare ratios a few percent apart.
    accept_reps: usize,
    accept_connections: usize,
    accept_concurrency: usize,
    abort_connections: usize,
    registry_pairs: u64,
    memory_guards: usize,
    smtp_clients: usize,
    smtp_messages_per_client: usize,
    smtp_message_size: usize,
    /// Sessions held in DATA at once (memory of a session in DATA).
    data_sessions: usize,
    /// Bytes each of them sends before the figure is taken.
    data_size: usize,
    /// Repetitions of that scenario (each writes sessions × size bytes).
    data_reps: usize,
    idle_connections: usize,
    idle_tls_connections: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            reps: 5,
            accept_reps: 15,
            accept_connections: 10_000,
            accept_concurrency: 32,
            abort_connections: 10_000,
            registry_pairs: 1_000_000,
            memory_guards: 10_000,
            smtp_clients: 8,
            smtp_messages_per_client: 40,
            smtp_message_size: 10 * 1024,
            data_sessions: 200,
            data_size: 8 << 20,
            data_reps: 3,
            idle_connections: 10_000,
            idle_tls_connections: 5_000,
        }
    }

    fn smoke() -> Self {
        Self {
            reps: 1,
            accept_reps: 1,
            accept_connections: 200,
            accept_concurrency: 8,
            abort_connections: 200,
            registry_pairs: 10_000,
            memory_guards: 1_000,
            smtp_clients: 8,
            smtp_messages_per_client: 2,
            smtp_message_size: 10 * 1024,
            data_sessions: 20,
            data_size: 256 << 10,
            data_reps: 1,
            idle_connections: 200,
            idle_tls_connections: 50,
        }
    }
}

#[derive(Debug)]
struct Options {
    sizes: Sizes,
    only: Option<Vec<String>>,
    report: Option<PathBuf>,
    gateway: Option<PathBuf>,
    no_gateway: bool,
    timeline: bool,
}

impl Options {
    fn parse() -> Res<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        let mut options = Options {
            sizes: if full { Sizes::full() } else { Sizes::smoke() },
            only: None,
            report: None,
            gateway: None,
            no_gateway: false,
            timeline: false,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .ok_or_else(|| format!("{name} needs a value (see the bench's doc comment)"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--reps" => {
                    let v = value("--reps")?;
                    options.sizes.reps = v
                        .parse()
                        .map_err(|_| format!("--reps {v:?}: expected a count such as 5"))?;
                    options.sizes.data_reps = options.sizes.reps;
                    options.sizes.accept_reps = 3 * options.sizes.reps;
                }
                "--data-sessions" => {
                    let v = value("--data-sessions")?;
                    options.sizes.data_sessions = v.parse().map_err(|_| {
                        format!("--data-sessions {v:?}: expected a count such as 200")
                    })?;
                }
                "--only" => {
                    options.only = Some(value("--only")?.split(',').map(str::to_owned).collect())
                }
                "--report" => options.report = Some(value("--report")?.into()),
                "--gateway" => options.gateway = Some(value("--gateway")?.into()),
                "--no-gateway" => options.no_gateway = true,
                "--timeline" => options.timeline = true,
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; known: --reps N, --only LIST, \
                         --report FILE, --gateway PATH, --no-gateway, --data-sessions N, \
                         --timeline"
                    )
                    .into())
                }
            }
        }
        Ok(options)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == scenario))
    }
}

/// Raises the soft open-files limit to the hard limit (10,000 connections
/// need more than the usual 1,024 descriptors).
fn raise_nofile_limit() -> Res<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

fn main() {
    if std::env::var(client::ROLE_VAR).as_deref() == Ok(client::ROLE_CLIENT) {
        if let Err(e) = raise_nofile_limit().and_then(|_| client::run_client_role()) {
            eprintln!("load client: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::var(client::ROLE_VAR).as_deref() == Ok(idle::ROLE_TLS_BASELINE) {
        if let Err(e) = idle::run_tls_baseline_role() {
            eprintln!("idle TLS baseline: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::var(client::ROLE_VAR).as_deref() == Ok(idle::ROLE_BASELINE) {
        if let Err(e) = idle::run_baseline_role() {
            eprintln!("idle baseline: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run() {
        eprintln!("lifecycle bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let options = Options::parse()?;
    let nofile = raise_nofile_limit()?;
    let sizes = &options.sizes;
    eprintln!(
        "lifecycle bench: {} repetitions, open-files limit {nofile}, {} cores",
        sizes.reps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let gateway = if options.no_gateway {
        None
    } else {
        gateway::locate(options.gateway.as_deref())
    };
    match &gateway {
        Some(p) => eprintln!("gateway binary: {}", p.display()),
        None => eprintln!("no lifecycle-gateway binary: its rows stay unmeasured"),
    }
    let gateway = gateway.as_deref();
    let mut client = client::LoadClient::spawn()?;
    let mut rows = Vec::new();
    let mut failed = false;
    let mut add = |name: &str, result: Res<Vec<Row>>| match result {
        Ok(r) => rows.extend(r),
        Err(e) => {
            eprintln!("scenario {name} failed: {e}");
            failed = true;
            rows.push(Row {
                what: name.to_string(),
                ours: None,
                baselines: vec![],
                target: String::new(),
                paired: Vec::new(),
                met: Met::Failed(e.to_string().replace(['\n', '|'], " ")),
            });
        }
    };
    let sizes = &options.sizes;
    if options.wants("registry") {
        add("registry", scenarios::registry_rows(sizes));
    }
    if options.wants("accept") {
        add("accept", scenarios::accept_rows(&mut client, sizes));
    }
    if options.wants("abort") {
        add("abort", scenarios::abort_rows(&mut client, sizes));
    }
    if options.wants("memory") {
        add("memory", scenarios::memory_rows(&ALLOCATOR, sizes));
    }
    if options.wants("start") {
        add("start/stop", scenarios::start_stop_rows(sizes, gateway));
    }
    if options.wants("smtp") {
        add(
            "smtp",
            scenarios::smtp_row(&mut client, sizes, gateway).map(|r| vec![r]),
        );
    }
    if options.wants("control") {
        add(
            "control",
            control::control_rows(sizes, gateway, options.timeline),
        );
    }
    if options.wants("data") {
        add(
            "data",
            scenarios::data_memory_row(sizes, gateway).map(|r| vec![r]),
        );
    }
    drop(client);
    if options.wants("idle") {
        add(
            "idle",
            idle::idle_rows(
                sizes.reps,
                sizes.idle_connections,
                sizes.idle_tls_connections,
                gateway,
            ),
        );
    }

    let table = report::markdown(&rows);
    let text = format!("{}\n{}", table, report::legend(sizes.reps));
    println!("{text}");
    if let Some(path) = &options.report {
        std::fs::write(path, &text)
            .map_err(|e| format!("cannot write the report to {}: {e}", path.display()))?;
    }
    if failed {
        return Err("some scenarios failed (see above and the table)".into());
    }
    Ok(())
}
