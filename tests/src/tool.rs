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

/// The variable `scripts/test` sets when it ran as root and installed every
/// tool the tests use: a test that would skip then fails instead, because a
/// skip there means an install step is missing.
pub const NO_SKIP_ENV: &str = "LIFECYCLE_TESTS_NO_SKIP";

/// Reports that a check cannot run here: prints `SKIP: <why>` (see
/// [`loud`]) and returns, so the caller returns from the test; panics
/// instead when [`NO_SKIP_ENV`] is set, since `scripts/test` then promised
/// every tool.
///
/// ```
/// let swaks_has_tls = true; // e.g. asked `swaks --support`
/// if !swaks_has_tls {
///     lifecycle_tests::skip("swaks has no TLS (install libnet-ssleay-perl)");
///     return;
/// }
/// ```
pub fn skip(why: &str) {
    let strict = std::env::var_os(NO_SKIP_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    skip_or_fail(why, strict);
}

fn skip_or_fail(why: &str, strict: bool) {
    if strict {
        panic!(
            "{why}: {NO_SKIP_ENV} is set (scripts/test installed every tool as root), \
             so this check must run; add the missing package to scripts/test"
        );
    }
    loud(&format!("SKIP: {why}"));
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
    skip(&format!(
        "{tool} not installed (run scripts/test as root to install it); \
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
    skip(&format!(
        "not root: {why} needs root (CI runs as root); the check did not run"
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
        assert!(!find_in_path("lifecycle-tests-no-such-tool"));
    }

    #[test]
    fn a_skip_is_only_printed_when_skips_are_allowed() {
        skip_or_fail("a check that cannot run", false);
    }

    #[test]
    #[should_panic(expected = "add the missing package to scripts/test")]
    fn a_skip_fails_when_scripts_test_promised_every_tool() {
        skip_or_fail("swaks has no TLS", true);
    }
}
