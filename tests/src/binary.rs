//! Building the `lifecycle-gateway` binary from another package's tests.
//!
//! `CARGO_BIN_EXE_*` only names binaries of the package under test, so the
//! tests of this package ask Cargo itself: a nested `cargo build` in the
//! same target directory, reading the executable's path from Cargo's JSON
//! messages.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::paths::workspace_root;

/// Builds `lifecycle-gateway` with the release profile (load tests want an
/// optimised server) and returns the path of the executable; when
/// [`GATEWAY_BIN_ENV`] (`LIFECYCLE_GATEWAY_BIN`) is set, returns that path
/// instead.
///
/// Runs `cargo build --release -p lifecycle-gateway
/// --message-format=json-render-diagnostics` from the workspace root with
/// the Cargo that runs the tests; diagnostics go to this process's stderr.
/// Cheap when the binary is up to date.
///
/// ```no_run
/// let bin = lifecycle_tests::gateway_bin()?;
/// assert!(bin.is_file());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn gateway_bin() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os(GATEWAY_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{GATEWAY_BIN_ENV}={} is not a file; unset it to build the binary",
                    path.display()
                ),
            ));
        }
        return Ok(path);
    }
    cargo_bin("lifecycle-gateway", "lifecycle-gateway")
}

/// Names an already built `lifecycle-gateway` to use instead of building
/// one (for CI that builds once, or a binary under investigation).
pub const GATEWAY_BIN_ENV: &str = "LIFECYCLE_GATEWAY_BIN";

/// Builds binary `bin` of package `package` in release mode and returns
/// its path (see [`gateway_bin`]).
pub fn cargo_bin(package: &str, bin: &str) -> io::Result<PathBuf> {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`cargo build --release -p {package}` failed ({}); see the compiler output above",
            output.status
        )));
    }
    stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter(|l| l.contains(&format!(r#""name":"{bin}""#)))
        .find_map(|l| json_string(l, "executable"))
        .map(PathBuf::from)
        .ok_or_else(|| {
            io::Error::other(format!(
                "cargo built {package} but reported no executable named {bin}"
            ))
        })
}

/// The string value of `"key":"value"` in one line of JSON, with the
/// escapes Cargo uses in paths undone.
fn json_string(line: &str, key: &str) -> Option<String> {
    let needle = format!(r#""{key}":""#);
    let start = line.find(&needle)? + needle.len();
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_executable_from_a_cargo_message() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"x"},"executable":"/t/a \"b\"\\c","fresh":true}"#;
        assert_eq!(
            json_string(line, "executable").as_deref(),
            Some(r#"/t/a "b"\c"#)
        );
        assert_eq!(json_string(r#"{"executable":null}"#, "executable"), None);
    }
}
