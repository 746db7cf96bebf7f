//! One function per row group of the table: runs ours and the baselines
//! interleaved and judges the row against its target (issue 9).

use crate::client::LoadClient;
use crate::report::{check_abs, check_paired_rate, check_ratio, met, Met, Row};
use crate::stats::{self, Samples, Summary, Unit};
use crate::{abort, accept, memory, ours, registry, Res, Sizes};

mod gateway_rows;

pub(crate) use gateway_rows::{data_memory_row, smtp_row, start_stop_rows};

fn summaries(names: &[&str], samples: &[Samples]) -> Vec<(String, Summary)> {
    names
        .iter()
        .zip(samples)
        .filter_map(|(n, s)| s.summary().map(|s| (n.to_string(), s)))
        .collect()
}

fn find<'a>(all: &'a [(String, Summary)], name: &str) -> Res<&'a Summary> {
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .ok_or_else(|| format!("no figures for {name}").into())
}

pub(crate) fn registry_rows(sizes: &Sizes) -> Res<Vec<Row>> {
    let contenders = vec![
        registry::Contender {
            name: "ours, 1 thread",
            threads: 1,
            run: Box::new(|pairs| ours::registry_pairs(1, pairs)),
        },
        registry::Contender {
            name: "ours, 2 threads",
            threads: 2,
            run: Box::new(|pairs| ours::registry_pairs(2, pairs)),
        },
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
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let all = summaries(&names, &samples);
    let cross = *find(&all, "do_send cross thread")?;
    let mut rows = Vec::new();
    for (threads, ours_name, mutex_name) in [
        (1, "ours, 1 thread", "Mutex<HashMap>, 1 thread"),
        (2, "ours, 2 threads", "Mutex<HashMap>, 2 threads"),
    ] {
        let ours = *find(&all, ours_name)?;
        let baselines = all
            .iter()
            .filter(|(n, _)| {
                n == mutex_name || n == "do_send same thread" || n == "do_send cross thread"
            })
            .cloned()
            .collect();
        rows.push(Row {
            what: format!(
                "registry: register+unregister pairs/s through the guard API, \
                 {threads} producer thread{}, each with its own shard",
                if threads == 1 { "" } else { "s" }
            ),
            ours: Some(ours),
            baselines,
            target: "≥ 2,000,000 pairs/s and ≥ 0.5× do_send cross thread".into(),
            paired: Vec::new(),
            met: met(vec![
                check_abs(&ours, 2e6, "pairs/s"),
                check_ratio(&ours, &cross, 0.5, "do_send cross thread"),
            ]),
        });
    }
    Ok(rows)
}

pub(crate) fn accept_rows(client: &mut LoadClient, sizes: &Sizes) -> Res<Vec<Row>> {
    const OURS_ONE: &str = "ours, 1 arbiter";
    const OURS_WORKER: &str = "ours, accept + 1 worker arbiter";
    const OURS_LIMITED: &str = "ours, 1 arbiter, limits on";
    const TOKIO: &str = "plain tokio";
    const ACTIX_SERVER: &str = "actix-server";
    // Limits on right after limits off: the order rotates every repetition,
    // so the two stay neighbours (but once) and their per-repetition ratio
    // compares runs moments apart.
    let contenders = [
        accept::Contender {
            name: OURS_ONE,
            start: ours::start_accept,
        },
        accept::Contender {
            name: OURS_LIMITED,
            start: ours::start_accept_limited,
        },
        accept::Contender {
            name: TOKIO,
            start: accept::start_tokio,
        },
        accept::Contender {
            name: OURS_WORKER,
            start: ours::start_accept_worker,
        },
        accept::Contender {
            name: ACTIX_SERVER,
            start: accept::start_actix_server,
        },
    ];
    let measured = accept::measure(
        client,
        &contenders,
        sizes.accept_reps,
        sizes.accept_connections,
        sizes.accept_concurrency,
    )?;
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let index = |name: &str| -> Res<usize> {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("no contender {name}").into())
    };
    // Per-repetition ratio of one contender's samples to another's.
    let paired = |samples: &[Samples], ours: &str, baseline: &str| -> Res<Summary> {
        stats::paired_ratio(&samples[index(ours)?], &samples[index(baseline)?])
            .ok_or_else(|| format!("no paired figures for {ours} / {baseline}").into())
    };
    let rates = summaries(&names, &measured.figure);
    let ours_one = *find(&rates, OURS_ONE)?;
    let ours_worker = *find(&rates, OURS_WORKER)?;
    let ours_limited = *find(&rates, OURS_LIMITED)?;
    let one_tokio = paired(&measured.figure, OURS_ONE, TOKIO)?;
    let one_actix = paired(&measured.figure, OURS_ONE, ACTIX_SERVER)?;
    let worker_actix = paired(&measured.figure, OURS_WORKER, ACTIX_SERVER)?;
    let limited_one = paired(&measured.figure, OURS_LIMITED, OURS_ONE)?;
    let limited_one_cpu = paired(&measured.cpu, OURS_LIMITED, OURS_ONE)?;
    let baselines: Vec<(String, Summary)> = rates
        .iter()
        .filter(|(n, _)| n == TOKIO || n == ACTIX_SERVER)
        .cloned()
        .collect();
    let mut cpu = summaries(&names, &measured.cpu);
    let ours_cpu = cpu.remove(index(OURS_ONE)?).1;
    let admission = admission_row(sizes, &ours_cpu)?;
    let load = format!(
        "{} connections per rep, {} in flight, {} repetitions",
        sizes.accept_connections, sizes.accept_concurrency, sizes.accept_reps
    );
    Ok(vec![
        Row {
            what: format!(
                "accept path: connections/s, ListenerActor + registry + metrics accepting \
                 and serving on one arbiter; plain tokio on a current-thread runtime \
                 ({load})"
            ),
            ours: Some(ours_one),
            baselines: baselines.clone(),
            target: "≥ 0.95× plain tokio, ≥ 1.0× actix-server".into(),
            paired: vec![(TOKIO.into(), one_tokio), (ACTIX_SERVER.into(), one_actix)],
            met: met(vec![
                check_paired_rate(&one_tokio, 0.95, TOKIO),
                check_paired_rate(&one_actix, 1.0, ACTIX_SERVER),
            ]),
        },
        Row {
            what: format!(
                "accept path, like for like with actix-server (accept thread + 1 worker): \
                 ListenerActor accepting on one arbiter, serving on one worker arbiter \
                 ({load})"
            ),
            ours: Some(ours_worker),
            baselines,
            target: "≥ 1.0× actix-server (same thread layout)".into(),
            paired: vec![(ACTIX_SERVER.into(), worker_actix)],
            met: met(vec![check_paired_rate(&worker_actix, 1.0, ACTIX_SERVER)]),
        },
        Row {
            what: format!(
                "accept path with admission limits on (max_connections, max_per_address \
                 and a rate per address, generous: never hit) against limits off, \
                 both ours on one arbiter, run back to back in every repetition \
                 ({load}); CPU time per connection, limits on / off, per repetition: \
                 {limited_one_cpu}"
            ),
            ours: Some(ours_limited),
            baselines: vec![("ours, limits off".to_owned(), ours_one)],
            target: "≥ 0.97× limits off (at most 3 % apart)".into(),
            paired: vec![("ours, limits off".to_owned(), limited_one)],
            met: met(vec![check_paired_rate(&limited_one, 0.97, "limits off")]),
        },
        Row {
            what: format!(
                "accept path: CPU time per connection of the server process \
                 (getrusage over the same runs; a busy machine disturbs it less); \
                 {OURS_ONE}"
            ),
            ours: Some(ours_cpu),
            baselines: cpu,
            target: "(explains the rows above)".into(),
            paired: Vec::new(),
            met: Met::Report,
        },
        admission,
    ])
}

/// The admission check alone, limits on against off, in nanoseconds per
/// admitted connection, and what it adds as a share of the accept path's
/// CPU time per connection (`accept_cpu`, limits off): a figure that a
/// busy machine barely moves, where the accept rates above vary by more
/// than the 3 % they are judged by.
fn admission_row(sizes: &Sizes, accept_cpu: &Summary) -> Res<Row> {
    let pairs = sizes.registry_pairs;
    let mut on = Samples::new(Unit::Nanos);
    let mut off = Samples::new(Unit::Nanos);
    for rep in 0..sizes.accept_reps {
        for limited in [rep % 2 == 0, rep % 2 == 1] {
            let took = ours::admission_pairs(limited, pairs)?;
            let ns = took.as_secs_f64() * 1e9 / pairs as f64;
            if limited {
                on.push(ns)
            } else {
                off.push(ns)
            }
        }
    }
    let on = on.summary().ok_or("no admission figures")?;
    let off = off.summary().ok_or("no admission figures")?;
    let added_ns = (on.median - off.median).max(0.0);
    let share = added_ns / (accept_cpu.median * 1e3);
    Ok(Row {
        what: format!(
            "admission check alone: admit + drop of a connection from one address on one \
             shard, limits on (as above) vs none ({pairs} pairs per rep, {} repetitions); \
             limits add {added_ns:.0} ns per connection = {:.2} % of the accept path's CPU \
             time per connection ({accept_cpu})",
            sizes.accept_reps,
            share * 100.0
        ),
        ours: Some(on),
        baselines: vec![("no limits".to_owned(), off)],
        target: "what limits add ≤ 3 % of the accept path's CPU per connection".into(),
        paired: Vec::new(),
        met: if share <= 0.03 {
            Met::Yes
        } else {
            Met::No(format!(
                "{:.2} % of the accept path's CPU per connection",
                share * 100.0
            ))
        },
    })
}

pub(crate) fn abort_rows(client: &mut LoadClient, sizes: &Sizes) -> Res<Vec<Row>> {
    let contenders = [
        abort::Contender {
            name: "ours",
            start: ours::start_abort,
        },
        abort::Contender {
            name: "shutdown(2) loop",
            start: abort::start_shutdown_loop,
        },
    ];
    let measured = abort::measure(client, &contenders, sizes.reps, sizes.abort_connections)?;
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let mut wall = summaries(&names, &measured.figure);
    let ours = wall.remove(0).1;
    let baseline = *find(&wall, "shutdown(2) loop")?;
    let mut cpu = summaries(&names, &measured.cpu);
    let ours_cpu = cpu.remove(0).1;
    Ok(vec![
        Row {
            what: format!(
                "abort: {} idle connections, registry Shutdown to Done",
                sizes.abort_connections
            ),
            ours: Some(ours),
            baselines: wall,
            target: "≤ 1.2× shutdown(2) loop".into(),
            paired: Vec::new(),
            met: met(vec![check_ratio(&ours, &baseline, 1.2, "shutdown(2) loop")]),
        },
        Row {
            what: "abort: CPU time of the server process over the same spans (getrusage)".into(),
            ours: Some(ours_cpu),
            baselines: cpu,
            target: "(explains the row above)".into(),
            paired: Vec::new(),
            met: Met::Report,
        },
    ])
}

pub(crate) fn memory_rows(counting: &memory::Counting, sizes: &Sizes) -> Res<Vec<Row>> {
    let n = sizes.memory_guards;
    let mut ours_bytes = Samples::new(Unit::Bytes);
    let mut ours_fds = Samples::new(Unit::Count);
    let mut reference = Samples::new(Unit::Bytes);
    let mut last = None;
    for _ in 0..sizes.reps {
        let m = ours::memory_per_guard(counting, n)?;
        ours_bytes.push(m.bytes);
        ours_fds.push(m.extra_fds);
        last = Some(m);
        reference.push(memory::mutex_hashmap_bytes(counting, n)?);
    }
    let bytes = ours_bytes.summary().ok_or("no memory figures")?;
    let fds = ours_fds.summary().ok_or("no fd figures")?;
    let breakdown = match last {
        Some(ours::GuardMemory {
            bytes: total,
            per_connection_alloc: Some(alloc),
            guard,
            ..
        }) => format!(
            "; per connection: one {alloc} B allocation + the {guard} B guard + \
             {:.0} B of shard hash table",
            total - alloc as f64 - guard as f64
        ),
        _ => String::new(),
    };
    Ok(vec![
        Row {
            what: format!(
                "memory per tracked connection: heap bytes of registry entry + guard, \
                 {n} guards (counting allocator{breakdown})"
            ),
            ours: Some(bytes),
            baselines: summaries(&["Mutex<HashMap> entry (mox, reference)"], &[reference]),
            target: "≤ 128 B".into(),
            paired: Vec::new(),
            met: met(vec![check_abs(&bytes, 128.0, "bytes per connection")]),
        },
        Row {
            what: format!("extra fds for {n} tracked connections (/proc/self/fd)"),
            ours: Some(fds),
            baselines: vec![],
            target: "0".into(),
            paired: Vec::new(),
            met: met(vec![check_abs(&fds, 0.0, "extra fds")]),
        },
    ])
}
