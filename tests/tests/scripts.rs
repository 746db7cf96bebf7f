//! The repository's own scripts: where they find what cargo built, and what
//! `scripts/test` installs.

use std::path::Path;
use std::process::Command;

use lifecycle_tests::workspace_root;

/// Runs `scripts/target-dir` with `CARGO_TARGET_DIR` set to `value` (or
/// unset) and returns the path it prints.
fn target_dir(value: Option<&str>) -> String {
    let root = workspace_root();
    let mut command = Command::new(root.join("scripts/target-dir"));
    command.current_dir(std::env::temp_dir());
    match value {
        Some(v) => command.env("CARGO_TARGET_DIR", v),
        None => command.env_remove("CARGO_TARGET_DIR"),
    };
    let out = command.output().expect("scripts/target-dir runs");
    assert!(
        out.status.success(),
        "scripts/target-dir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("a UTF-8 path")
        .trim_end()
        .to_owned()
}

#[test]
fn the_target_directory_follows_cargo_target_dir() {
    let root = workspace_root();
    let scratch = tempfile::tempdir().unwrap();
    let absolute = scratch.path().join("elsewhere");
    assert_eq!(
        target_dir(Some(absolute.to_str().unwrap())),
        absolute.to_str().unwrap()
    );
    // Relative to the workspace, as cargo itself reads it there.
    assert_eq!(
        Path::new(&target_dir(Some("relative-target"))),
        root.join("relative-target")
    );
    // Unset: cargo's default (./target unless a cargo config says otherwise);
    // always an absolute path.
    assert!(Path::new(&target_dir(None)).is_absolute());
}

#[test]
fn the_scripts_find_binaries_through_target_dir() {
    // scripts/bench used to build into CARGO_TARGET_DIR and then look under
    // $PWD/target; both scripts must ask scripts/target-dir instead.
    for script in ["scripts/bench", "scripts/test"] {
        let text = std::fs::read_to_string(workspace_root().join(script)).unwrap();
        assert!(
            text.contains("$(scripts/target-dir)"),
            "{script} does not use scripts/target-dir"
        );
        assert!(
            !text.contains("$PWD/target"),
            "{script} still assumes $PWD/target"
        );
    }
}

#[test]
fn scripts_test_installs_swaks_with_tls() {
    // swaks --tls needs Perl's Net::SSLeay; without it the TLS deliveries of
    // the privileged test skip.
    let text = std::fs::read_to_string(workspace_root().join("scripts/test")).unwrap();
    assert!(text.contains("[perl:Net::SSLeay]=libnet-ssleay-perl"));
    assert!(text.contains("export LIFECYCLE_TESTS_NO_SKIP=1"));
}
