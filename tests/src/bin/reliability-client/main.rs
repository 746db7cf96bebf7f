//! Load clients for the reliability tests, run as a child process so that
//! their sockets count against their own open-files limit, not the test's.
//!
//! ```text
//! reliability-client churn SMTP_ADDR IMAP_ADDR TOTAL CONCURRENCY
//! reliability-client hold ADDR=N [ADDR=N ...]
//! reliability-client data SMTP_ADDR N SIZE
//! ```
//!
//! `churn` runs TOTAL short SMTP and IMAP sessions (alternating) on
//! CONCURRENCY threads; every tenth session is reset mid-command with
//! SO_LINGER 0. It prints `half` once half of them ended. A `term` line on
//! stdin marks the moment the test is about to signal the server (answered
//! with `term-ack`): sessions that ended before it must all have gone
//! normally. The last line is `result key=value ...`.
//!
//! `flood ADDR N hold|close [side=IP]` opens N connections one after the
//! other and classifies each by its first line: greeted (kept open with
//! `hold`, closed with `close`) or busy (`421 `/`* BYE`, then it must be
//! closed by the server); halfway through, one client from `side` IP is
//! greeted or not. It prints `flood greeted=G busy=B busy_closed=C
//! other=O busy_closed_ms_p50=.. side_greeted=0|1 side_ms=..`, then
//! `flood-busy-line LINE`, and holds until `exit`.
//!
//! `hold` opens N silent connections to each ADDR, prints `held
//! connected=C failed=F`, then obeys stdin commands: `greeted MS`, `busy
//! MS` (wait for every first line, take out the busy ones), `speak`
//! (greeting and one NOOP on every connection), `probe K`,
//! `deliver K`, `release-except K`, `peer-closed MS`, `close-times MS`,
//! `exit` (see [`Holder`]).
//!
//! `data` holds N sessions in DATA at the same time (see `data.rs`).
//!
//! `lb ADDR SOURCES CONCURRENCY ACKED_FILE` sends one message per
//! connection from several source addresses until `stop` (see `lb.rs`).

use std::io::{self, Write};
use std::time::Duration;

/// Read timeout of every client socket: a reply slower than this is a hang.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

mod churn;
mod data;
mod flood;
mod hold;
mod lb;

fn main() {
    raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("churn") => churn::run(&args[1..]),
        Some("hold") => hold::run(&args[1..]),
        Some("data") => data::run(&args[1..]),
        Some("flood") => flood::run(&args[1..]),
        Some("lb") => lb::run(&args[1..]),
        _ => Err("usage: reliability-client churn|hold|data|flood|lb ...".to_owned()),
    };
    if let Err(e) = result {
        eprintln!("reliability-client: {e}");
        std::process::exit(2);
    }
}

/// Soft open-files limit up to the hard limit.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub(crate) fn parse<T: std::str::FromStr>(
    args: &[String],
    i: usize,
    what: &str,
) -> Result<T, String> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {} ({what}) missing or invalid", i + 1))
}

pub(crate) fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
