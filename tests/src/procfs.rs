//! What `/proc` tells about a running process: open descriptors, CPU time
//! and memory.

use std::io;

/// Figures of one process read from `/proc/PID/*`.
///
/// ```
/// let me = lifecycle_tests::ProcStats::new(std::process::id());
/// assert!(me.open_fds()? >= 3);
/// assert!(me.fd_numbers()?.starts_with(&[0, 1, 2]));
/// assert!(me.status_kib("VmRSS")? > 0);
/// let _ = me.cpu_seconds()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pid: u32,
}

impl ProcStats {
    /// Stats of process `pid`.
    pub fn new(pid: u32) -> Self {
        ProcStats { pid }
    }

    /// The number of entries in `/proc/PID/fd`.
    pub fn open_fds(&self) -> io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count())
    }

    /// The numbers of the open descriptors in `/proc/PID/fd`, lowest
    /// first (for this process, the one reading the directory shows too).
    pub fn fd_numbers(&self) -> io::Result<Vec<i32>> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{}/fd", self.pid))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        Ok(fds)
    }

    /// A `kB` field of `/proc/PID/status`, such as `VmRSS` or `VmHWM`.
    pub fn status_kib(&self, field: &str) -> io::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(field)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {field} in /proc/{}/status", self.pid),
                )
            })
    }

    /// A field of `/proc/PID/status` as text, trimmed: `Uid` gives
    /// `"0\t0\t0\t0"`, `Groups` `""` when there are none, `NoNewPrivs`
    /// `"1"`.
    pub fn status_text(&self, field: &str) -> io::Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {field} in /proc/{}/status", self.pid),
                )
            })
    }

    /// User plus system CPU time the process used so far (`utime + stime`
    /// of `/proc/PID/stat`), in seconds.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse /proc/{}/stat", self.pid),
            )
        };
        // The command name is in parentheses and may hold spaces: fields
        // are counted after the last ')'. utime and stime are fields 14 and
        // 15 of the whole line, so 12 and 13 after the name.
        let after = &text[text.rfind(')').ok_or_else(bad)? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields
            .get(11)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)?;
        let stime: u64 = fields
            .get(12)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100);
        Ok((utime + stime) as f64 / ticks as f64)
    }
}
