//! SIGTERM and SIGINT as streams of the runtime.

use actix_rt::signal::unix::{signal, Signal, SignalKind};
use slog::{error, Logger};

/// Registers SIGTERM and SIGINT with the runtime: from here on they are
/// queued for the streams instead of killing the process. A failure is
/// logged; the service then stops only by [`BeginShutdown`](super::BeginShutdown).
pub(super) fn install_signal_streams(log: &Logger) -> Vec<(Signal, i32)> {
    let mut streams = Vec::with_capacity(2);
    for (kind, signo) in [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::interrupt(), libc::SIGINT),
    ] {
        match signal(kind) {
            Ok(stream) => streams.push((stream, signo)),
            Err(e) => {
                error!(log, "cannot listen for a signal; stop with a message instead";
                    "signal" => signal_name(signo), "error" => %e);
            }
        }
    }
    streams
}

/// The name of `signal` for logs.
pub(super) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}
