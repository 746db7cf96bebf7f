//! Skipping loudly when a test cannot run here.

use std::io::Write;
use std::path::Path;

/// Writes one line straight to the process's standard error.
///
/// libtest captures `println!`/`eprintln!` of passing tests; this bypasses
/// the capture, so a skipped check or a measured figure shows up in a plain
/// `cargo test` run. Write errors are ignored: a test must not fail because
/// its report could not be printed.
///
/// ```
/// lifecycle_tests::loud("exposure of unit.service: 1.1 (bound 1.3)");
/// ```
pub fn loud(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Returns `true` when `tool` is an executable file in one of the `PATH`
/// directories; otherwise prints `SKIP: <tool> not installed ...` (see
/// [`loud`]) and returns `false`, and the caller returns from the test.
///
/// `scripts/test` installs every tool the tests use when it runs as root.
///
/// ```
/// if !lifecycle_tests::require_tool("systemd-analyze") {
///     return;
/// }
/// // ... use systemd-analyze ...
/// ```
pub fn require_tool(tool: &str) -> bool {
    if find_in_path(tool) {
        return true;
    }
    loud(&format!(
        "SKIP: {tool} not installed (run scripts/test as root to install it); \
         the checks that need it did not run"
    ));
    false
}

/// Returns `true` when the process runs as root (effective uid 0);
/// otherwise prints `SKIP: not root: <why>` (see [`loud`]) and returns
/// `false`.
///
/// ```
/// if lifecycle_tests::require_root("chown to the service user") {
///     // ... root-only part of the test ...
/// }
/// ```
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    loud(&format!(
        "SKIP: not root: {why} needs root (CI runs as root); the check did not run"
    ));
    false
}

fn find_in_path(tool: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_every_unix_has() {
        assert!(require_tool("sh"));
    }

    #[test]
    fn a_missing_tool_is_reported_missing() {
        assert!(!require_tool("lifecycle-tests-no-such-tool"));
    }
}
