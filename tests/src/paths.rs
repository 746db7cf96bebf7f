//! Where tests put scratch files and where the repository's files are.

use std::path::{Path, PathBuf};

/// The root of the workspace (the directory holding `deploy/`, `crates/`
/// and this `tests/` package), from the path Cargo compiled this crate at.
///
/// ```
/// let root = lifecycle_tests::workspace_root();
/// assert!(root.join("tests").join("Cargo.toml").is_file());
/// ```
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.join(".."), Path::to_path_buf)
}

/// A fresh temporary directory named `lifecycle-<label>-XXXXXX`, removed
/// with everything in it when the returned value is dropped. Tests never
/// use fixed `/tmp` paths: parallel tests would collide.
///
/// ```
/// let dir = lifecycle_tests::temp_dir("spool")?;
/// std::fs::write(dir.path().join("message"), b"hello")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn temp_dir(label: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("lifecycle-{label}-"))
        .tempdir()
}
