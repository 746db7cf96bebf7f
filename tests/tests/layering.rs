//! No circle of `use` imports between the files of a crate (issue 20): for
//! every crate of the workspace (libraries, binaries, tests, benches,
//! examples), each `use` leaf and each `crate::`/`super::`/`self::` path
//! (re-exports followed) is an edge between the two sibling modules it
//! connects, and no group of siblings may reach each other. A module and
//! its own children (or deeper descendants) may use each other.
//!
//! Run `cargo test -p lifecycle-tests --test layering -- --nocapture` for
//! the figures (crates, files and sibling edges checked per package).

#[path = "layering/cycles.rs"]
mod cycles;
#[path = "layering/lexer.rs"]
mod lexer;
#[path = "layering/modules.rs"]
mod modules;

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace")
        .to_path_buf()
}

/// Checks the package at `dir` (relative to the workspace): every file is
/// reached from a crate root, and no circle exists.
fn assert_no_circles(dir: &str) {
    let workspace = workspace();
    let report = cycles::check_package(&workspace.join(dir), &workspace).unwrap();
    eprintln!(
        "{dir}: {} crates, {} files, {} sibling edges, {} circles",
        report.crates,
        report.files,
        report.edges,
        report.circles.len()
    );
    assert!(
        report.crates > 0 && report.files > 0,
        "{dir}: nothing checked"
    );
    assert!(
        report.unreached.is_empty(),
        "{dir}: files no crate root reaches (not checked): {:?}",
        report.unreached
    );
    let circles: Vec<String> = report.circles.iter().map(ToString::to_string).collect();
    assert!(
        circles.is_empty(),
        "{dir}: {} circles of use imports between sibling modules; cut one edge of each:\n{}",
        circles.len(),
        circles.concat()
    );
}

#[test]
fn lifecycle_handoff_has_no_circles() {
    assert_no_circles("crates/handoff");
}

#[test]
fn actix_lifecycle_has_no_circles() {
    assert_no_circles("crates/actix-lifecycle");
}

#[test]
fn gateway_has_no_circles() {
    assert_no_circles("crates/gateway");
}

#[test]
fn tests_examples_and_adopter_have_no_circles() {
    for dir in ["tests", "examples", "tests/adopter"] {
        assert_no_circles(dir);
    }
}

#[test]
fn every_workspace_package_is_checked() {
    let workspace = workspace();
    let mut packages: Vec<String> = std::fs::read_dir(workspace.join("crates"))
        .unwrap()
        .map(|e| format!("crates/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    packages.sort();
    assert_eq!(
        packages,
        ["crates/actix-lifecycle", "crates/gateway", "crates/handoff"],
        "a new crate: add a test above for it"
    );
}

/// The check finds a circle made of a `use`, a `super::` path and a
/// re-export, names each edge's place, and lets a parent and its children
/// use each other.
#[test]
fn a_circle_is_found_and_a_parent_child_pair_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    let files = [
        ("lib.rs", "mod a;\nmod b;\nmod c;\npub use a::Z;\n/// crate::c::Y in a doc comment\npub struct X;\n"),
        ("a.rs", "mod inner;\nuse crate::b::B;\npub struct Z;\n"),
        ("a/inner.rs", "use super::super::c::Y;\nuse crate::a::Z;\n"),
        ("b.rs", "pub struct B;\nfn f() { let _ = \"crate::a::Z\"; }\n"),
        ("c.rs", "pub struct Y;\nfn g() -> crate::X { crate::X }\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let report = cycles::check_package(dir.path(), dir.path()).unwrap();
    assert_eq!((report.crates, report.files), (1, 5), "{report:?}");
    assert!(
        report.circles.is_empty(),
        "a uses b and c, nothing uses a: {report:?}"
    );

    // b uses c (in a group), c uses a (through the root's re-export):
    // a → b → c → a.
    std::fs::write(
        src.join("b.rs"),
        "use crate::{c::{self, Y}};\npub struct B;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("c.rs"),
        "pub struct Y;\nfn g() -> crate::Z { crate::Z }\n",
    )
    .unwrap();
    let report = cycles::check_package(dir.path(), dir.path()).unwrap();
    assert_eq!(report.circles.len(), 1, "{report:?}");
    let circle = &report.circles[0];
    assert_eq!(circle.members, ["a", "b", "c"]);
    assert!(circle.parent.starts_with("crate "), "{circle}");
    let text = circle.to_string();
    for edge in [
        "a -> b: src/a.rs:2 crate::b::B",
        "a -> c: src/a/inner.rs:1 crate::c::Y",
        "b -> c: src/b.rs:1 crate::c",
        "c -> a: src/c.rs:2 crate::Z",
    ] {
        assert!(text.contains(edge), "{edge} missing in:\n{text}");
    }
}
