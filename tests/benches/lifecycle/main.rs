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
//! `--reps N`, `--only accept,abort,registry,memory,start,stop,smtp`,
//! `--report FILE` (write the Markdown table there),
//! `--gateway PATH` (the lifecycle-gateway binary; default: next to the
//! bench's own target directory).

mod abort;
mod accept;
mod client;
mod listen;
mod memory;
mod registry;
mod report;
mod smtp_sink;
mod start;
mod stats;

use report::Row;
use stats::{Samples, Summary, Unit};
use std::path::PathBuf;

/// Counts allocations for the memory scenario only (off otherwise).
#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting::new();

/// Errors of the bench: reported with their context, then exit 1.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Contender order for repetition `rep`: rotates so none always goes first.
pub(crate) fn rotate(n: usize, rep: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + rep) % n)
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    reps: usize,
    accept_connections: usize,
    accept_concurrency: usize,
    abort_connections: usize,
    registry_pairs: u64,
    memory_guards: usize,
    smtp_clients: usize,
    smtp_messages_per_client: usize,
    smtp_message_size: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            reps: 5,
            accept_connections: 10_000,
            accept_concurrency: 32,
            abort_connections: 10_000,
            registry_pairs: 1_000_000,
            memory_guards: 10_000,
            smtp_clients: 8,
            smtp_messages_per_client: 40,
            smtp_message_size: 10 * 1024,
        }
    }

    fn smoke() -> Self {
        Self {
            reps: 1,
            accept_connections: 200,
            accept_concurrency: 8,
            abort_connections: 200,
            registry_pairs: 10_000,
            memory_guards: 1_000,
            smtp_clients: 8,
            smtp_messages_per_client: 2,
            smtp_message_size: 10 * 1024,
        }
    }
}

#[derive(Debug)]
struct Options {
    sizes: Sizes,
    only: Option<Vec<String>>,
    report: Option<PathBuf>,
    gateway: Option<PathBuf>,
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
                }
                "--only" => {
                    options.only = Some(value("--only")?.split(',').map(str::to_owned).collect())
                }
                "--report" => options.report = Some(value("--report")?.into()),
                "--gateway" => options.gateway = Some(value("--gateway")?.into()),
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; known: --reps N, --only LIST, \
                         --report FILE, --gateway PATH"
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

fn summaries(names: &[&str], samples: &[Samples]) -> Vec<(String, Summary)> {
    names
        .iter()
        .zip(samples)
        .filter_map(|(n, s)| s.summary().map(|s| (n.to_string(), s)))
        .collect()
}

fn main() {
    if std::env::var(client::ROLE_VAR).as_deref() == Ok(client::ROLE_CLIENT) {
        if let Err(e) = raise_nofile_limit().and_then(|_| client::run_client_role()) {
            eprintln!("load client: {e}");
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
    let mut rows = Vec::new();
    let mut client = client::LoadClient::spawn()?;

    if options.wants("registry") {
        rows.extend(registry_rows(sizes)?);
    }
    if options.wants("accept") {
        rows.push(accept_row(&mut client, sizes)?);
    }
    if options.wants("abort") {
        rows.push(abort_row(&mut client, sizes)?);
    }
    if options.wants("memory") {
        rows.push(memory_row(sizes)?);
    }
    if options.wants("start") {
        rows.push(start_row(sizes)?);
    }
    if options.wants("smtp") {
        rows.push(smtp_row(&mut client, sizes)?);
    }
    drop(client);

    let table = report::markdown(&rows);
    let text = format!("{}\n{}", table, report::legend(sizes.reps));
    println!("{text}");
    if let Some(path) = &options.report {
        std::fs::write(path, &text)
            .map_err(|e| format!("cannot write the report to {}: {e}", path.display()))?;
    }
    Ok(())
}

const NOT_IN_MAIN: &str = "actix-lifecycle's actors are not in main yet";
const NO_GATEWAY: &str = "the lifecycle-gateway binary is not in main yet";

fn registry_rows(sizes: &Sizes) -> Res<Vec<Row>> {
    let contenders = vec![
        registry::Contender {
            name: "Mutex<HashMap>, 1 thread",
            threads: 1,
            run: Box::new(|pairs| registry::mutex_hashmap(1, pairs)),
        },
        registry::Contender {
            name: "Mutex<HashMap>, 2 threads",
            threads: 2,
            run: Box::new(|pairs| registry::mutex_hashmap(2, pairs)),
        },
        registry::Contender {
            name: "do_send same thread",
            threads: 1,
            run: Box::new(registry::do_send_same_thread),
        },
        registry::Contender {
            name: "do_send cross thread",
            threads: 1,
            run: Box::new(registry::do_send_cross_thread),
        },
    ];
    let samples = registry::measure(&contenders, sizes.reps, sizes.registry_pairs)?;
    let all = summaries(
        &contenders.iter().map(|c| c.name).collect::<Vec<_>>(),
        &samples,
    );
    let pick = |names: &[&str]| -> Vec<(String, Summary)> {
        all.iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    let target = "≥ 2,000,000 pairs/s and ≥ 0.5× do_send cross thread";
    Ok(vec![
        Row::without_ours(
            "registry: register+unregister pairs/s, 1 producer thread",
            pick(&[
                "Mutex<HashMap>, 1 thread",
                "do_send same thread",
                "do_send cross thread",
            ]),
            target,
            NOT_IN_MAIN,
        ),
        Row::without_ours(
            "registry: register+unregister pairs/s, 2 producer threads",
            pick(&[
                "Mutex<HashMap>, 2 threads",
                "do_send same thread",
                "do_send cross thread",
            ]),
            target,
            NOT_IN_MAIN,
        ),
    ])
}

fn accept_row(client: &mut client::LoadClient, sizes: &Sizes) -> Res<Row> {
    let contenders = [
        accept::Contender {
            name: "plain tokio",
            start: accept::start_tokio,
        },
        accept::Contender {
            name: "actix-server",
            start: accept::start_actix_server,
        },
    ];
    let samples = accept::measure(
        client,
        &contenders,
        sizes.reps,
        sizes.accept_connections,
        sizes.accept_concurrency,
    )?;
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    Ok(Row::without_ours(
        format!(
            "accept path: connections/s ({} per rep, {} in flight)",
            sizes.accept_connections, sizes.accept_concurrency
        ),
        summaries(&names, &samples),
        "≥ 0.95× plain tokio, ≥ 1.0× actix-server",
        NOT_IN_MAIN,
    ))
}

fn abort_row(client: &mut client::LoadClient, sizes: &Sizes) -> Res<Row> {
    let contenders = [abort::Contender {
        name: "shutdown(2) loop",
        start: abort::start_shutdown_loop,
    }];
    let samples = abort::measure(client, &contenders, sizes.reps, sizes.abort_connections)?;
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    Ok(Row::without_ours(
        format!(
            "abort: {} idle connections, order to all ended",
            sizes.abort_connections
        ),
        summaries(&names, &samples),
        "≤ 1.2× shutdown(2) loop",
        NOT_IN_MAIN,
    ))
}

fn memory_row(sizes: &Sizes) -> Res<Row> {
    let mut reference = Samples::new(Unit::Bytes);
    for _ in 0..sizes.reps {
        reference.push(memory::mutex_hashmap_bytes(
            &ALLOCATOR,
            sizes.memory_guards,
        )?);
    }
    Ok(Row::without_ours(
        format!(
            "memory per tracked connection ({} guards)",
            sizes.memory_guards
        ),
        summaries(&["Mutex<HashMap> entry (mox, for reference)"], &[reference]),
        "≤ 128 B, 0 extra fds",
        NOT_IN_MAIN,
    ))
}

fn start_row(sizes: &Sizes) -> Res<Row> {
    let Some(trivial) = start::trivial_binary() else {
        return Err("no /bin/true or /usr/bin/true for the start baseline".into());
    };
    let mut exec = Samples::new(Unit::Millis);
    for _ in 0..sizes.reps {
        exec.push_duration(start::exec_to_exit(trivial)?);
    }
    let baselines = summaries(&["exec of /bin/true"], &[exec]);
    Ok(Row::without_ours(
        "start: exec to ready, immediate mode",
        baselines,
        "≤ 50 ms",
        NO_GATEWAY,
    ))
}

fn smtp_row(client: &mut client::LoadClient, sizes: &Sizes) -> Res<Row> {
    let spool_root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let mut sink = Samples::new(Unit::PerSecond);
    let total = (sizes.smtp_clients * sizes.smtp_messages_per_client) as u64;
    for rep in 0..sizes.reps {
        let spool = spool_root.path().join(format!("sink-{rep}"));
        std::fs::create_dir(&spool)?;
        let server = smtp_sink::start(spool.clone())?;
        let took = client.smtp(
            server.addr,
            sizes.smtp_clients,
            sizes.smtp_messages_per_client,
            sizes.smtp_message_size,
        );
        server.stop()?;
        sink.push_rate(
            total,
            took.map_err(|e| format!("smtp, no-fsync sink: {e}"))?,
        );
        let spooled = std::fs::read_dir(&spool)?.count() as u64;
        if spooled != total {
            return Err(format!("no-fsync sink spooled {spooled} messages, sent {total}").into());
        }
    }
    Ok(Row::without_ours(
        format!(
            "SMTP: messages/s, {} clients, {} KiB messages, fsync on",
            sizes.smtp_clients,
            sizes.smtp_message_size / 1024
        ),
        summaries(&["sink without fsync"], &[sink]),
        "report the ratio",
        NO_GATEWAY,
    ))
}
