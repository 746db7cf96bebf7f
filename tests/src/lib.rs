//! Support for the end-to-end tests of actix-lifecycle.
//!
//! The tests in `tests/tests/` start real processes, bind real sockets and
//! send real signals. This crate holds what they share:
//!
//! - [`require_tool`] and [`require_root`]: skip a test loudly (the line is
//!   visible even though libtest captures output) when an outside tool or
//!   root is missing;
//! - [`free_port`]: a loopback port that was free a moment ago;
//! - [`temp_dir`] and [`workspace_root`]: where to put scratch files and
//!   where the repository's own files are;
//! - [`ChildGuard`]: a child process that is killed and reaped when the test
//!   ends, however it ends;
//! - [`UnitFile`]: a small reader for systemd unit files, for checking the
//!   deployment files against each other;
//! - [`gateway_bin`] and [`GatewayProcess`]: the real `lifecycle-gateway`
//!   binary, built in release mode and run on port 0 with a JSON log;
//! - [`GatewayConfig`]: the gateway's TOML config as the tests write it;
//! - [`LogFollower`]: a process's log followed line by line, to wait for a
//!   line (at once told when the process died) instead of sleeping;
//! - [`http_get`]: a plain HTTP/1.0 `GET`;
//! - [`NotifySocket`]: a stand-in for systemd's `NOTIFY_SOCKET` that knows
//!   who sent each datagram;
//! - [`ProcStats`]: open descriptors, CPU time and memory of a process from
//!   `/proc`;
//! - [`ServiceUser`]: run one of our binaries as `nobody` from a test that
//!   runs as root, from a copy that user can execute wherever the checkout
//!   lies (even under a `0700` home directory).
//!
//! The binary `reliability-client` holds the load clients of the
//! reliability tests (run as a child process, so that its sockets count
//! against its own open-files limit).
//!
//! ```
//! use lifecycle_tests::{require_tool, ChildGuard};
//! use std::process::Command;
//! use std::time::Duration;
//!
//! if require_tool("sleep") {
//!     let mut child = ChildGuard::spawn(Command::new("sleep").arg("30"))?;
//!     child.signal(nix::sys::signal::Signal::SIGTERM)?;
//!     let status = child.wait_timeout(Duration::from_secs(10))?;
//!     assert!(status.is_some(), "sleep should stop on SIGTERM");
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod binary;
mod config_check;
mod gateway;
mod gateway_config;
mod http;
mod log;
mod message;
mod notify;
mod nspawn;
mod paths;
mod port;
mod process;
mod procfs;
mod self_exec;
mod service_user;
mod smtp_reply;
mod tool;
mod unit_file;

pub use binary::{cargo_bin, gateway_bin, GATEWAY_BIN_ENV};
pub use config_check::{all_settings_on, check_config, ConfigCheck};
pub use gateway::{
    gateway_command, json_field, json_number, metric_samples, metric_value, GatewayBuilder,
    GatewayProcess,
};
pub use gateway_config::GatewayConfig;
pub use http::http_get;
pub use log::LogFollower;
pub use message::{message_lines, MESSAGE_LINE_LEN};
pub use notify::{Datagram, NotifyRecorder, NotifySocket, Probe};
pub use nspawn::{apt_mirror, cached_root, cannot_boot, target_dir, Container, NspawnError};
pub use paths::{temp_dir, workspace_root};
pub use port::free_port;
pub use process::ChildGuard;
pub use procfs::ProcStats;
pub use self_exec::{exit_after, open_fds, role_exit};
pub use service_user::{install_program, Installed, ServiceUser, ServiceUserError};
pub use smtp_reply::read_reply;
pub use tool::{loud, require_root, require_tool, skip, NO_SKIP_ENV};
pub use unit_file::{UnitFile, UnitFileError};
