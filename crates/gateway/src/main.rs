//! `lifecycle-gateway`: see `lifecycle-gateway --help`.

use std::process::ExitCode;

use clap::Parser;
use lifecycle_gateway::{Cli, Config, EXIT_CONFIG};

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
    eprintln!(
        "lifecycle-gateway: serving is not wired yet (waiting for the actix-lifecycle actors)"
    );
    ExitCode::FAILURE
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
