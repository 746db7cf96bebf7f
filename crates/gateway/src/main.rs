//! `lifecycle-gateway`: see `lifecycle-gateway --help`.

use std::process::ExitCode;

use clap::Parser;
use lifecycle_gateway::{run, stderr_logger, Cli, Config, EXIT_CONFIG};
use slog::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let (log, guard) = stderr_logger(config.log().format(), config.log().level());
    info!(log, "starting"; "version" => env!("CARGO_PKG_VERSION"), "pid" => std::process::id(),
        "config" => cli.config.as_ref().map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string()));
    let code = match run(&config, &log) {
        Ok(code) => u8::try_from(code).unwrap_or(1),
        Err(e) => {
            error!(log, "cannot start"; "error" => %e);
            drop(log);
            drop(guard);
            eprintln!("lifecycle-gateway: {e}");
            return ExitCode::FAILURE;
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
