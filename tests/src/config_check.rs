//! The gateway's own verdict on a configuration (`--check-config`), and
//! the sample configuration with its commented-out settings switched on:
//! one owner for both, for the deploy, Kubernetes and gateway tests.

use std::io;
use std::path::Path;
use std::process::Command;

use crate::paths::temp_dir;

/// What `lifecycle-gateway --check-config` said of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigCheck {
    /// Whether it exited with status 0 (the configuration is accepted).
    pub accepted: bool,
    /// Its standard output, then its standard error (lossily decoded).
    pub said: String,
}

/// Runs the gateway binary `bin` with `--check-config` on `text`, written
/// to a file in a fresh temporary directory.
pub fn check_config(bin: &Path, text: &str) -> io::Result<ConfigCheck> {
    let dir = temp_dir("check-config")?;
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text)?;
    let out = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()?;
    Ok(ConfigCheck {
        accepted: out.status.success(),
        said: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// `text` with every commented-out setting (`#key = ...`, `#[table]`)
/// switched on; comments in prose (`# ...`, `#Capital`) stay.
///
/// ```
/// let sample = "# Where mail goes.\n#spool_dir = \"/var/spool\"\n#[log]\nlevel = \"info\"\n";
/// assert_eq!(
///     lifecycle_tests::all_settings_on(sample),
///     "# Where mail goes.\nspool_dir = \"/var/spool\"\n[log]\nlevel = \"info\"\n"
/// );
/// ```
pub fn all_settings_on(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => {
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect()
}
