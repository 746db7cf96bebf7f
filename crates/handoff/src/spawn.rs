//! Starting the unprivileged child: descriptors placed at 3, 4, ..., the
//! privilege drop, and the parent-death signal, all between the child's
//! start and its exec.
//!
//! [`ChildSpawner`] starts the child with vfork semantics (see [`vfork`]):
//! no copy of the parent's page tables to make and tear down again, kernel
//! work that would otherwise hold a CPU from the service at every upgrade.
//! [`pass_fds`] serves a caller's own `std::process::Command` (a `fork`).
//! Either way, between the start and `exec` only async-signal-safe calls
//! are allowed: no allocation, no locks, no logging. Everything the child
//! needs is prepared before it starts.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod vfork;

use crate::child_process::ChildProcess;
use crate::env::{ChildHandoff, VarNames, FIRST_PASSED_FD};
use crate::error::{Error, Result};
use crate::exec::{child_environment, ExecArgs, Program};
use crate::inventory::Inventory;
use crate::lineage::Lineage;
use crate::privilege::TargetUser;
use crate::ready::ReadyPair;

/// How far to mark descriptors close-on-exec when `close_range` is missing
/// and the open-files limit cannot be read.
const FALLBACK_FD_LIMIT: RawFd = 65_536;

/// Arranges for the child of `command` to receive `fds` at 3, 4, ... in
/// order, with every other descriptor above 2 marked close-on-exec, so
/// only stdio and the placed descriptors survive `exec`.
///
/// The descriptors are moved into `command` (into its `pre_exec` closure)
/// and stay open as long as `command` lives, so the child gets exactly
/// these even if the caller has closed its own copies by the time it calls
/// `spawn`; they are closed when `command` is dropped. To keep using a
/// descriptor in the parent, pass a duplicate
/// ([`try_clone_to_owned`](std::os::fd::BorrowedFd::try_clone_to_owned)).
///
/// The mapping is done in two steps so no source is clobbered: first every
/// source is duplicated above the target range (`F_DUPFD_CLOEXEC`), then
/// each copy is `dup2`ed into place (which clears close-on-exec on the
/// target; the copies stay close-on-exec).
///
/// If `exec` fails after the mapping, std's internal error pipe may have been
/// replaced by a placed descriptor, so the failure shows as the child exiting
/// with status 1 rather than as a spawn error.
///
/// ```
/// use std::os::fd::AsFd;
/// use std::process::Command;
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let mut command = Command::new("true");
/// lifecycle_handoff::pass_fds(&mut command, [listener.as_fd().try_clone_to_owned().unwrap()]);
/// drop(listener); // the command holds its own copy until it is dropped
/// assert!(command.status().unwrap().success());
/// ```
pub fn pass_fds(command: &mut Command, fds: impl IntoIterator<Item = OwnedFd>) {
    let fds: Vec<OwnedFd> = fds.into_iter().collect();
    let mut plan = FdPlan::new(fds.iter().map(AsRawFd::as_raw_fd), None);
    // SAFETY: `place` only calls async-signal-safe functions (fcntl, dup2,
    // close_range) and writes into vectors allocated before the fork; the
    // descriptors it maps are owned by the closure, so they are open for as
    // long as the command (which holds the closure) can be spawned.
    unsafe {
        command.pre_exec(move || {
            let _owned = &fds;
            plan.place()
        });
    }
}

/// Everything the fd mapping needs, allocated before the fork.
///
/// It holds raw numbers: whoever builds it keeps the descriptors open for
/// as long as the closure that runs [`place`](Self::place) can run.
struct FdPlan {
    sources: Vec<RawFd>,
    moved: Vec<RawFd>,
    /// A descriptor the child needs until exec (the program) but that must
    /// not be passed: moved above the placed ones, still close-on-exec.
    keep: Option<RawFd>,
    floor: RawFd,
    limit: RawFd,
}

impl FdPlan {
    fn new(fds: impl IntoIterator<Item = RawFd>, keep: Option<RawFd>) -> Self {
        let sources: Vec<RawFd> = fds.into_iter().collect();
        let moved = vec![-1; sources.len()];
        let count = RawFd::try_from(sources.len()).unwrap_or(RawFd::MAX - FIRST_PASSED_FD);
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .and_then(|(soft, _)| RawFd::try_from(soft).ok())
            .unwrap_or(FALLBACK_FD_LIMIT);
        FdPlan {
            sources,
            moved,
            keep,
            floor: FIRST_PASSED_FD + count,
            limit,
        }
    }

    /// Runs in the child between fork and exec: async-signal-safe only.
    fn place(&mut self) -> io::Result<()> {
        self.place_keeping().map(drop)
    }

    /// [`place`](Self::place), returning the `keep` descriptor's new number.
    fn place_keeping(&mut self) -> io::Result<RawFd> {
        let dup_above = |source: RawFd, floor: RawFd| {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) is async-signal-safe and creates
            // a new descriptor; `source` is kept open by the plan's owner.
            let copy = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, floor) };
            if copy < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(copy)
            }
        };
        for (slot, &source) in self.moved.iter_mut().zip(&self.sources) {
            *slot = dup_above(source, self.floor)?;
        }
        let kept = match self.keep {
            Some(fd) => dup_above(fd, self.floor)?,
            None => -1,
        };
        for (target, &copy) in (FIRST_PASSED_FD..).zip(&self.moved) {
            // SAFETY: dup2 is async-signal-safe; `copy` >= floor > target, so
            // this is never the dup2(fd, fd) no-op that would keep
            // FD_CLOEXEC set, and the new `target` is not close-on-exec.
            if unsafe { libc::dup2(copy, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        close_others_on_exec(self.floor, self.limit);
        Ok(kept)
    }
}

/// Starts the unprivileged child: the same executable with the same
/// arguments (by default), the hand-off variables set, the inventory's
/// descriptors at 3.. (listeners, then files), every other descriptor above
/// 2 close-on-exec, and, before exec: an empty signal mask, `setgroups([])`, `setgid`, `setuid`
/// to the target user, `PR_SET_NO_NEW_PRIVS`, `PR_SET_PDEATHSIG(SIGKILL)`
/// and a check that the parent is still alive.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that started the child exits: spawn from
/// the main thread (or one that lives as long as the parent).
///
/// # The program is executed by descriptor
///
/// At every spawn (the first child and each upgrade) this process, still
/// privileged, opens the program by its path (`O_PATH | O_CLOEXEC`), and the
/// child, after the privilege drop, executes that descriptor with
/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`. So the directories on the
/// program's path need not be searchable by the target user (a build under
/// a `0700` home directory starts as `nobody`); only the file's own mode
/// matters. That is checked before the fork: a program whose mode bits do
/// not let the target user execute it (owner, group or other class, as the
/// kernel picks it; the child has no supplementary groups; ACLs are not
/// read) is refused with [`Error::ProgramNotExecutable`], naming the file,
/// the user and the `chmod` that fixes it. `argv[0]` is the program's path,
/// so `ps` and `/proc/PID/cmdline` show it as before. The descriptor is
/// moved above the passed ones in the child, so placing those at 3.. cannot
/// clobber it, and it is close-on-exec: the new program never sees it.
/// (A `#!` script is run too: its interpreter reads it as `/dev/fd/N`, so
/// for a script that one descriptor stays open.)
///
/// ```no_run
/// use lifecycle_handoff::{ChildSpawner, Handoff, ListenerSpec, Mode, Supervisor, TargetUser};
///
/// # fn main() -> Result<(), lifecycle_handoff::Error> {
/// let user = TargetUser::lookup("nobody")?; // before binding anything
/// let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Privileged)?;
/// drop(handoff.listen(&ListenerSpec::tcp("smtp", "0.0.0.0:25".parse().unwrap()))?);
/// let mut kept = handoff.into_inventory();
/// let supervisor = Supervisor::new()?; // block signals before the child exists
/// let mut child = ChildSpawner::new()?.user(user).spawn(&kept)?;
/// kept.close_files(); // the child has its copies of the secrets
/// std::process::exit(supervisor.wait(&mut child)?);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ChildSpawner {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    removed: Vec<OsString>,
    user: Option<TargetUser>,
    names: VarNames,
    death_signal: bool,
    niceness: i32,
    idle: bool,
}

/// The suffix Linux appends to `/proc/self/exe` once the executable was
/// replaced or removed.
const DELETED_SUFFIX: &[u8] = b" (deleted)";

impl ChildSpawner {
    /// A spawner for this executable with this process's arguments, no user
    /// change, variable prefix `LIFECYCLE`, parent-death signal on.
    ///
    /// The executable's path is resolved once, here
    /// (`std::env::current_exe`), and every spawn opens that *path* anew and
    /// executes what it opened: after `mv new-binary /usr/local/bin/prog` a
    /// later spawn (an upgrade) runs the new binary. Create the spawner at start-up, before the binary can
    /// have been replaced; if Linux already reports the running image as
    /// `... (deleted)`, the suffix is dropped so the path on disk is used.
    pub fn new() -> Result<Self> {
        let program = std::env::current_exe().map_err(|source| Error::Spawn {
            program: PathBuf::from("(current executable)"),
            user: "(unchanged)".to_owned(),
            source,
        })?;
        Ok(ChildSpawner {
            program: path_on_disk(program),
            args: std::env::args_os().skip(1).collect(),
            envs: Vec::new(),
            removed: Vec::new(),
            user: None,
            names: VarNames::default(),
            death_signal: true,
            niceness: 0,
            idle: false,
        })
    }

    /// The program every spawn executes.
    pub fn program_path(&self) -> &Path {
        &self.program
    }

    /// Does not pass `name` to the child (it is removed from the inherited
    /// environment).
    pub fn env_remove(mut self, name: impl Into<OsString>) -> Self {
        self.removed.push(name.into());
        self
    }

    /// Whether the child gets `PR_SET_PDEATHSIG(SIGKILL)` and checks that
    /// its parent is still alive before exec (default: on). Turn it off only
    /// for a successor that must outlive the process starting it
    /// ([`SuccessorHandoff`](crate::SuccessorHandoff)).
    pub fn parent_death_signal(mut self, on: bool) -> Self {
        self.death_signal = on;
        self
    }

    /// Starts the child with its nice value `increment` above this
    /// process's (default 0: the same; clamped to the range of nice
    /// values); set by the child before its exec, so every thread the
    /// program starts inherits it. Raising it needs no privilege; lowering
    /// it again later needs `CAP_SYS_NICE` (see
    /// [`UpgradeSupervisor::start_niceness`](crate::UpgradeSupervisor::start_niceness),
    /// which uses this for upgrade candidates).
    pub fn niceness(mut self, increment: i32) -> Self {
        self.niceness = increment.max(0);
        self
    }

    /// Starts the child under the `SCHED_IDLE` scheduling policy (default:
    /// off): it then runs only when no thread of a normal policy wants the
    /// CPU, and every waking normal thread preempts it at once (a raised
    /// nice value only lowers its share). Set by the child before its exec,
    /// like [`niceness`](Self::niceness); entering `SCHED_IDLE` needs no
    /// privilege. The spawning thread waits until the child has executed
    /// (vfork semantics), so on a busy machine the spawn itself takes as
    /// long as an idle-priority thread waits for a CPU (24–40 ms were seen
    /// at a load average of 3). Leaving `SCHED_IDLE` later needs
    /// `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows the nice value (see
    /// [`UpgradeSupervisor::start_idle`](crate::UpgradeSupervisor::start_idle)).
    pub fn idle_scheduling(mut self, on: bool) -> Self {
        self.idle = on;
        self
    }

    /// Runs `program` instead of this executable.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Passes `args` instead of this process's arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets one more environment variable in the child.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Runs the child as `user` (default: keep this process's ids, which
    /// for a root parent means a root child — only for `allow_root` setups).
    pub fn user(mut self, user: TargetUser) -> Self {
        self.user = Some(user);
        self
    }

    /// Uses these hand-off variable names (default prefix `LIFECYCLE`).
    pub fn var_names(mut self, names: VarNames) -> Self {
        self.names = names;
        self
    }

    /// The user the child will run as, if any.
    pub fn target_user(&self) -> Option<&TargetUser> {
        self.user.as_ref()
    }

    /// The hand-off variable names in use.
    pub fn names(&self) -> &VarNames {
        &self.names
    }

    /// Spawns the child with everything in `inventory`.
    pub fn spawn(&self, inventory: &Inventory) -> Result<ChildProcess> {
        self.spawn_inner(inventory, None)
    }

    /// Spawns the child with everything in `inventory`, plus the child's end
    /// of `ready` as the descriptor right after the listeners and files
    /// (announced in `<PREFIX>_READY_FD`) and `lineage` in
    /// `<PREFIX>_GENERATION`, `_UPGRADES_OK`, `_UPGRADES_FAILED`.
    ///
    /// Turn `ready` into a [`ReadyReceiver`](crate::ReadyReceiver) right
    /// after this returns, so the child's exit shows as end-of-file.
    pub fn spawn_with_ready(
        &self,
        inventory: &Inventory,
        ready: &ReadyPair,
        lineage: Lineage,
    ) -> Result<ChildProcess> {
        self.spawn_inner(inventory, Some((ready, lineage)))
    }

    fn spawn_inner(
        &self,
        inventory: &Inventory,
        ready: Option<(&ReadyPair, Lineage)>,
    ) -> Result<ChildProcess> {
        let mut handoff = ChildHandoff::new(inventory, &self.names, std::process::id());
        if let Some((pair, lineage)) = ready {
            let number = FIRST_PASSED_FD.saturating_add(
                RawFd::try_from(handoff.fds.len()).unwrap_or(RawFd::MAX - FIRST_PASSED_FD),
            );
            handoff
                .vars
                .push((self.names.ready_fd().into(), number.to_string().into()));
            handoff.vars.extend(lineage.encode(&self.names));
            handoff.fds.push(pair.child_end());
        }
        let user = || {
            self.user
                .as_ref()
                .map_or_else(|| "(unchanged)".to_owned(), ToString::to_string)
        };
        // Opened now, by this (privileged) process, at every spawn: the
        // file on disk at this moment is the one that runs, and the child
        // needs no search permission on its directories.
        let program = Program::open(&self.program, self.user.as_ref())?;
        // Stale upgrade variables (from a grandparent) never reach the child.
        let upgrade_vars = self.names.upgrade_vars();
        let removed = (self.removed.iter().map(OsString::as_os_str))
            .chain(upgrade_vars.iter().map(OsStr::new));
        let env = child_environment(
            removed,
            self.envs
                .iter()
                .cloned()
                .chain(handoff.vars.iter().cloned()),
        );
        let exec = ExecArgs::new(self.program.as_os_str(), &self.args, env).map_err(|source| {
            Error::Spawn {
                program: self.program.clone(),
                user: user(),
                source,
            }
        })?;
        let mut plan = FdPlan::new(
            handoff.fds.iter().map(AsRawFd::as_raw_fd),
            Some(program.fd().as_raw_fd()),
        );
        let ids = self.user.as_ref().map(|u| (u.uid(), u.gid()));
        let parent = nix::unistd::getpid().as_raw();
        let death_signal = self.death_signal;
        let nice = (self.niceness > 0).then(|| own_nice().saturating_add(self.niceness).min(19));
        let idle = self.idle;
        let mut work = || -> io::Error {
            let fd = match plan.place_keeping() {
                Ok(fd) => fd,
                Err(e) => return e,
            };
            if let Err(e) = unblock_all_signals() {
                return e;
            }
            if let Some(nice) = nice {
                // A lower priority only helps: a child that cannot have it
                // (a seccomp filter, say) starts as usual.
                let _ = set_nice(0, nice);
            }
            if idle {
                // The same: SCHED_IDLE only helps.
                let _ = set_policy(0, Policy::idle());
            }
            if let Err(e) = drop_privileges(ids, parent, death_signal) {
                return e;
            }
            exec.exec(fd)
        };
        // SAFETY: `work` runs in a child sharing this process's memory
        // (vfork semantics). It only makes async-signal-safe system calls
        // (fcntl, dup2, close_range, sigemptyset, pthread_sigmask,
        // setpriority, sched_setscheduler, raw setgroups/setgid/setuid,
        // prctl, getppid, execveat), allocates nothing, takes no lock,
        // cannot panic, and writes only `plan`'s vectors, allocated before.
        // The descriptors it maps stay open for the call: the inventory's
        // are borrowed, the program's is owned by `program`, alive here.
        let pid = unsafe { vfork::spawn(&mut work) }.map_err(|source| Error::Spawn {
            program: self.program.clone(),
            user: user(),
            source,
        })?;
        drop(program);
        Ok(ChildProcess::new(pid))
    }
}

/// This thread's nice value (0 when it cannot be read).
pub(crate) fn own_nice() -> i32 {
    // getpriority returns the nice value (-20..19); -1 is a valid value,
    // so failure shows only in errno, which is cleared first.
    nix::errno::Errno::clear();
    // SAFETY: getpriority takes plain integers and touches no memory of ours.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if nix::errno::Errno::last_raw() == 0 {
        nice
    } else {
        0
    }
}

/// Sets the nice value of thread `tid` (0: the calling thread).
/// Async-signal-safe: one system call.
pub(crate) fn set_nice(tid: libc::id_t, nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of
    // ours; it is a single system call, safe between fork and exec.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A scheduling policy with its static priority (0 for every policy but
/// the real-time ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    policy: libc::c_int,
    priority: libc::c_int,
}

impl Policy {
    /// `SCHED_IDLE`.
    pub(crate) fn idle() -> Self {
        Policy {
            policy: libc::SCHED_IDLE,
            priority: 0,
        }
    }

    /// This thread's policy and static priority.
    pub(crate) fn own() -> io::Result<Self> {
        // SAFETY: sched_getscheduler takes a plain integer.
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call to fill.
        if unsafe { libc::sched_getparam(0, &mut param) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Policy {
            policy,
            priority: param.sched_priority,
        })
    }
}

/// Sets the scheduling policy of thread `tid` (0: the calling thread).
/// Async-signal-safe: one system call, no allocation.
pub(crate) fn set_policy(tid: libc::pid_t, policy: Policy) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: policy.priority,
    };
    // SAFETY: `param` lives on this frame for the call; sched_setscheduler
    // only reads it.
    if unsafe { libc::sched_setscheduler(tid, policy.policy, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in the child between fork and exec: clears the signal mask, which
/// fork and exec keep (std does not reset it, and a parent that blocks
/// signals to supervise the child would otherwise hand it a blocked SIGTERM).
fn unblock_all_signals() -> io::Result<()> {
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; both calls are
    // async-signal-safe; the set lives on this stack frame.
    let result = unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut())
    };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

/// Runs in the child between fork and exec: async-signal-safe only.
/// Order matters: groups, then gid, then uid (a non-root process can no
/// longer change groups); the parent-death signal last, because changing
/// credentials clears it; then make sure the parent did not die first.
fn drop_privileges(
    ids: Option<(u32, u32)>,
    parent: libc::pid_t,
    death_signal: bool,
) -> io::Result<()> {
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let raw = |result: libc::c_long| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if let Some((uid, gid)) = ids {
        // Raw system calls, not glibc's wrappers: those apply the change to
        // every thread glibc knows of, which in a child that shares the
        // parent's memory (vfork semantics) are the parent's threads. The
        // kernel's calls change this process only.
        // SAFETY: setgroups with a zero count reads no memory.
        raw(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })?;
        // SAFETY: setgid/setuid take a plain id and touch no memory.
        raw(unsafe { libc::syscall(libc::SYS_setgid, gid) })?;
        // SAFETY: as above.
        raw(unsafe { libc::syscall(libc::SYS_setuid, uid) })?;
    }
    // SAFETY: prctl with integer arguments only; no memory is passed.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    if !death_signal {
        return Ok(());
    }
    // SAFETY: as above.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
    // SAFETY: getppid cannot fail and touches no memory.
    if unsafe { libc::getppid() } != parent {
        // The parent died before the death signal was armed.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Marks every descriptor from `floor` on close-on-exec (async-signal-safe).
fn close_others_on_exec(floor: RawFd, limit: RawFd) {
    let first = u32::try_from(floor).unwrap_or(u32::MAX);
    // SAFETY: close_range(CLOSE_RANGE_CLOEXEC) only sets flags on descriptors
    // in the range; it is a plain system call, async-signal-safe.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11: mark each one (EBADF on closed numbers is fine).
        for fd in floor..limit {
            // SAFETY: F_SETFD on any number only changes that descriptor's
            // close-on-exec flag, or fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// `path` without the ` (deleted)` suffix Linux gives a replaced executable.
fn path_on_disk(path: PathBuf) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = path.as_os_str().as_bytes();
    match bytes.strip_suffix(DELETED_SUFFIX) {
        Some(stripped) => PathBuf::from(OsString::from_vec(stripped.to_vec())),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_fails_before_the_fork_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let err = ChildSpawner::new()
            .unwrap()
            .program(&missing)
            .spawn(&Inventory::default())
            .unwrap_err();
        assert!(matches!(err, Error::ProgramOpen { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&*missing.to_string_lossy()), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }

    #[test]
    fn an_exec_failure_is_a_spawn_error_not_a_child_that_dies() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("not-a-program");
        std::fs::write(&program, b"\x7fELF but nothing an exec can load").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ChildSpawner::new()
            .unwrap()
            .program(&program)
            .args(Vec::<OsString>::new())
            .spawn(&Inventory::default())
            .unwrap_err();
        let Error::Spawn { source, .. } = &err else {
            panic!("not a spawn error: {err:?}");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOEXEC), "{err}");
    }

    /// The child shares this process's memory until its exec, and drops
    /// privileges in that time: the drop must reach the child only, never
    /// a thread of this process.
    #[test]
    fn a_child_run_as_another_user_leaves_this_process_threads_alone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: a_child_run_as_another_user_...: needs root");
            return;
        }
        let user = TargetUser::lookup("nobody").expect("the user nobody");
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = stopped.recv();
            nix::unistd::geteuid().as_raw()
        });
        let mut child = ChildSpawner::new()
            .unwrap()
            .program("/bin/sh")
            .args(["-c", &format!("test \"$(id -u)\" = {}", user.uid())])
            .user(user)
            .spawn(&Inventory::default())
            .expect("spawn as nobody");
        assert!(
            child.wait().unwrap().success(),
            "the child did not run as nobody"
        );
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status"));
            let Ok(status) = status else { continue }; // a thread that ended
            let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert!(
                uids.split_whitespace().skip(1).all(|id| id == "0"),
                "a thread of this process lost root: {uids}"
            );
        }
        stop.send(()).unwrap();
        assert_eq!(other.join().unwrap(), 0);
    }

    #[test]
    fn a_replaced_executable_is_found_on_disk() {
        assert_eq!(
            path_on_disk(PathBuf::from("/usr/bin/gw (deleted)")),
            PathBuf::from("/usr/bin/gw")
        );
        assert_eq!(
            path_on_disk(PathBuf::from("/usr/bin/gw")),
            PathBuf::from("/usr/bin/gw")
        );
    }
}
