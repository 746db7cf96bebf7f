//! The exit statuses of `lifecycle-gateway` that are not plain success or
//! failure, shared by serving (`main`, [`Cli`](crate::Cli)) and `ctl`.

/// Exit status for a bad configuration (and for bad command-line usage,
/// as clap does).
pub const EXIT_CONFIG: u8 = 2;

/// Exit status of `ctl` when the service refused or failed the request.
pub const EXIT_CTL_FAILED: u8 = 1;

/// Exit status of `ctl` when the service could not be reached or did not
/// answer in time.
pub const EXIT_CTL_UNREACHABLE: u8 = 3;
