//! Start baseline: exec of a trivial binary, from spawn to exit.

use crate::Res;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The trivial binary, searched where Debian and most systems keep it.
pub(crate) fn trivial_binary() -> Option<&'static Path> {
    ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

/// Spawns `binary` and waits for it to exit successfully.
pub(crate) fn exec_to_exit(binary: &Path) -> Res<Duration> {
    let start = Instant::now();
    let status = Command::new(binary)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let took = start.elapsed();
    if !status.success() {
        return Err(format!("{} exited with {status}", binary.display()).into());
    }
    Ok(took)
}
