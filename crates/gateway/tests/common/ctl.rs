//! Running `lifecycle-gateway ctl` against a control socket.

use std::path::Path;
use std::process::{Command, Output};

use super::BIN;

/// Runs `lifecycle-gateway ctl --socket SOCKET ARGS...`.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// The JSON `ctl --json` printed.
pub fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?} {out:?}"))
}
