//! The overlay each rig boots: a writable layer over the cached read-only
//! root, so that what the container installs survives a reboot.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An overlay mount of a read-only root: what a container writes goes to
/// its upper directory and stays there across boots; unmounted when
/// dropped.
pub(crate) struct Overlay {
    merged: PathBuf,
    _dir: tempfile::TempDir,
}

impl Overlay {
    /// Mounts an overlay of `lower` (left unchanged).
    pub(crate) fn mount(lower: &Path) -> Overlay {
        let dir = lifecycle_tests::temp_dir("overlay").unwrap();
        let [upper, work, merged] = ["upper", "work", "merged"].map(|d| dir.path().join(d));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount an overlay of {lower:?}: {out:?}"
        );
        Overlay { merged, _dir: dir }
    }

    /// The merged root to boot.
    pub(crate) fn root(&self) -> &Path {
        &self.merged
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}
