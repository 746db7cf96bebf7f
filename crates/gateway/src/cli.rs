//! The command line: `lifecycle-gateway [--config FILE] [--print-config] [--check-config]`.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, ConfigError};

/// Command-line arguments of `lifecycle-gateway`.
///
/// ```
/// use clap::Parser;
/// use lifecycle_gateway::Cli;
///
/// let cli = Cli::try_parse_from(["lifecycle-gateway", "--config", "g.toml", "--check-config"])?;
/// assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("g.toml")));
/// assert!(cli.check_config);
/// # Ok::<(), clap::Error>(())
/// ```
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lifecycle-gateway",
    version,
    about = "Multi-protocol gateway: SMTP sink with a durable spool, IMAP greeting, HTTP /metrics /healthz /readyz",
    long_about = "Multi-protocol gateway built on actix-lifecycle: an SMTP sink that stores every \
accepted message durably in a spool directory before answering 250, a minimal IMAP greeting \
service, and HTTP /metrics, /healthz and /readyz.\n\n\
On SIGTERM or SIGINT it drains (new SMTP sessions get 421, IMAP says BYE, /readyz answers 503), \
lets open sessions finish for the drain grace, aborts what is left, and exits 0. A second signal \
exits at once.\n\n\
Exit status: 0 after a clean stop, 2 for a bad configuration or bad arguments, 1 for other \
start-up failures (a port in use, an unwritable spool)."
)]
pub struct Cli {
    /// TOML configuration file. Without it the gateway runs unprivileged on the
    /// defaults: SMTP 127.0.0.1:2525, IMAP 127.0.0.1:1143, HTTP 127.0.0.1:9090,
    /// spool ./spool, drain grace 3s, abort grace 1s (see --print-config).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML, every default filled in, and
    /// exit. The output is itself a valid configuration file.
    #[arg(long)]
    pub print_config: bool,

    /// Check the configuration and exit without binding anything: status 0 and
    /// a summary when it is valid, status 2 and a message naming the line and
    /// key at fault when it is not.
    #[arg(long)]
    pub check_config: bool,

    /// A command instead of serving (`ctl`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A command other than serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Talk to a running service over its control socket: status, upgrade
    /// [--wait], stop, connections. Exit status: 0 ok, 1 the service refused
    /// or the upgrade failed (the reason is printed), 2 bad arguments or
    /// configuration, 3 the service could not be reached or did not answer
    /// in time.
    Ctl(crate::ctl::CtlArgs),
}

impl Cli {
    /// The configuration selected by `--config` (or the defaults).
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        match &self.config {
            Some(path) => Config::from_file(path),
            None => Ok(Config::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::EXIT_CONFIG;
    use clap::CommandFactory;

    #[test]
    fn help_explains_every_flag() {
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--config <FILE>",
            "--print-config",
            "--check-config",
            "--help",
            "--version",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
        assert!(help.contains("127.0.0.1:2525"), "{help}");
        assert!(help.contains("Exit status"), "{help}");
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_flags_are_usage_errors_with_status_2() {
        let err = Cli::try_parse_from(["lifecycle-gateway", "--confg", "x"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(EXIT_CONFIG));
    }

    #[test]
    fn no_config_means_defaults() {
        let cli = Cli::try_parse_from(["lifecycle-gateway"]).unwrap();
        assert_eq!(cli.load_config().unwrap(), Config::default());
    }
}
