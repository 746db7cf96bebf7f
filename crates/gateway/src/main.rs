//! `lifecycle-gateway`: see `lifecycle-gateway --help`.

use std::process::ExitCode;

use clap::Parser;
use lifecycle_gateway::{
    drop_in_place, serve, stderr_logger, supervise, Cli, Command, Config, CtlError, EXIT_CONFIG,
    EXIT_CTL_FAILED,
};
use lifecycle_handoff::{Handoff, HeldSignals, Mode, UpgradeSupervisor};
use slog::{error, info, o};

/// Prefix of the hand-off variables from the privileged parent to the
/// service (`LIFECYCLE_SOCKETS`, ...).
const HANDOFF_PREFIX: &str = "LIFECYCLE";

fn main() -> ExitCode {
    // First of all: SIGHUP and SIGUSR2 wait (pending) until their handlers
    // exist instead of terminating the process; every thread started from
    // here on inherits the mask.
    let held = match HeldSignals::hold() {
        Ok(held) => held,
        Err(e) => {
            eprintln!("lifecycle-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    if let Some(Command::Ctl(ctl)) = &cli.command {
        drop(held);
        return match ctl.run(cli.config.as_deref()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(CtlError::Refused(text)) if ctl.json => {
                println!("{text}");
                ExitCode::from(EXIT_CTL_FAILED)
            }
            Err(e) => {
                eprintln!("lifecycle-gateway ctl: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lifecycle-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if cli.check_config {
        println!("{}", summary(&cli, &config));
        return ExitCode::SUCCESS;
    }
    // Before any thread exists: detection removes environment variables,
    // and the privileged parent blocks the signals it forwards.
    let handoff = match Handoff::detect(HANDOFF_PREFIX) {
        Ok(handoff) => handoff,
        Err(e) => {
            eprintln!("lifecycle-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Started as root with the sockets already made (socket activation, a
    // parent that kept root): drop to `user` now, while this is the only
    // thread; reported once the logger runs.
    let dropped = drop_in_place(&config, handoff.mode());
    let supervisor = match handoff.mode() {
        Mode::Privileged => match UpgradeSupervisor::new() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("lifecycle-gateway: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let (log, guard) = stderr_logger(config.log().format(), config.log().level());
    // The privileged parent's lines say so; the service's lines are plain.
    let log = match &supervisor {
        Some(_) => log.new(o!("process" => "parent")),
        None => log,
    };
    info!(log, "starting"; "version" => env!("CARGO_PKG_VERSION"), "pid" => std::process::id(),
        "mode" => handoff.mode().as_str(), "reason" => handoff.reason(),
        "config" => cli.config.as_ref().map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string()));
    let result = dropped.and_then(|dropped| {
        if let Some(dropped) = dropped {
            dropped.log(&log, &config);
        }
        match supervisor {
            Some(supervisor) => {
                // The supervisor reads them from its signalfd: they stay blocked.
                drop(held);
                supervise(&config, handoff, supervisor, &log)
            }
            None => serve(&config, handoff, held, &log),
        }
    });
    let code = match result {
        Ok(code) => u8::try_from(code).unwrap_or(1),
        Err(e) => {
            error!(log, "cannot start"; "error" => %e);
            drop(log);
            drop(guard);
            eprintln!("lifecycle-gateway: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    drop(log);
    drop(guard);
    ExitCode::from(code)
}

fn summary(cli: &Cli, config: &Config) -> String {
    let origin = cli
        .config
        .as_ref()
        .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let listeners: Vec<String> = config
        .listeners()
        .iter()
        .map(|l| format!("{} {} {}", l.name(), l.protocol(), l.address()))
        .collect();
    format!(
        "{origin}: configuration ok; {} listener(s): {}",
        listeners.len(),
        listeners.join(", ")
    )
}
