//! Starting a child with vfork semantics: `clone(CLONE_VM | CLONE_VFORK)`
//! on a stack of its own, as glibc's `posix_spawn` does.
//!
//! A `fork` copies the parent's page tables and marks every page
//! copy-on-write, and the child's `exec` then tears that copy down: kernel
//! work that a non-preemptible kernel runs to the end while the service's
//! threads wait for the CPU (measured at an upgrade: 0.16–0.22 ms for the
//! fork, 0.26–0.33 ms for the exec, under strace). A child that shares the
//! parent's memory until it executes skips both.
//!
//! Sharing memory sets the rules for the code that runs in the child:
//!
//! - The calling thread is suspended until the child has executed or
//!   exited (`CLONE_VFORK`); other threads of the parent run on. The child
//!   allocates nothing, takes no lock and writes no memory of the parent's
//!   but the [`Shared`] record and the suspended thread's `errno`.
//! - Credentials are changed with raw system calls only: glibc's `setuid`
//!   and friends would signal every thread they believe belongs to the
//!   process, which in a child sharing the parent's memory are the
//!   parent's threads.
//! - Signal handlers would run on the parent's data: every signal is
//!   blocked around the `clone`, and the child resets every handled signal
//!   to its default action before anything else (it has its own handler
//!   table: no `CLONE_SIGHAND`).
//! - The child has its own descriptor table and working directory (no
//!   `CLONE_FILES`, no `CLONE_FS`): the descriptor moves between `clone`
//!   and `exec` do not touch the parent's.

use std::io;
use std::ptr;

/// The child's stack. The child code is a few small frames (descriptor
/// moves, a handful of system calls); this leaves room for a debug build.
const STACK_SIZE: usize = 256 * 1024;

/// What the child writes back before it exits on a failure.
struct Shared<'a> {
    work: &'a mut dyn FnMut() -> io::Error,
    /// The `errno` of the failed step; 0 while exec has not failed.
    errno: libc::c_int,
}

/// Starts a child that runs `work`, which must end in a successful `exec`
/// or return the error that stopped it; returns the child's pid once it
/// has executed.
///
/// When `work` returns, the child exits with status 127, is reaped here,
/// and its error is returned: an exec failure is a spawn error, never a
/// child that starts and dies.
///
/// # Safety
///
/// `work` runs in a child that shares this process's memory (see the
/// module documentation): it must only make async-signal-safe calls, must
/// not allocate, take locks, panic or unwind, and must change credentials
/// with raw system calls only.
pub(super) unsafe fn spawn(work: &mut dyn FnMut() -> io::Error) -> io::Result<libc::pid_t> {
    let stack = Stack::new()?;
    let mut shared = Shared { work, errno: 0 };
    let pid = {
        let _blocked = BlockedSignals::all()?;
        // SAFETY: `child_entry` receives a pointer to `shared`, which lives
        // on this frame until the call returns; with CLONE_VFORK the call
        // returns only after the child has executed or exited, so the
        // child never sees it dangle. `stack.top()` is the top of a mapped,
        // writable region owned by `stack`, which outlives the child's use
        // of it for the same reason. No CLONE_SIGHAND/FILES/FS: the child
        // has its own handlers, descriptors and directory.
        unsafe {
            libc::clone(
                child_entry,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                ptr::from_mut(&mut shared).cast(),
            )
        }
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `shared.errno` is a plain integer the child may have written
    // through the pointer it was given; read it as memory written behind
    // the compiler's back.
    let errno = unsafe { ptr::read_volatile(&shared.errno) };
    if errno == 0 {
        return Ok(pid);
    }
    reap(pid);
    Err(io::Error::from_raw_os_error(errno))
}

/// Runs in the child, on its own stack, sharing the parent's memory.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` that `spawn` passed, alive (the parent's
    // frame is suspended until this child executes or exits) and used by
    // nothing else meanwhile.
    let shared = unsafe { &mut *arg.cast::<Shared<'_>>() };
    reset_signal_handlers();
    let error = (shared.work)();
    shared.errno = error.raw_os_error().unwrap_or(libc::EINVAL);
    // SAFETY: _exit ends this child at once, running no handler of the
    // parent's (no atexit, no stdio flush).
    unsafe { libc::_exit(127) }
}

/// Sets every signal that has a handler back to its default action, and
/// SIGPIPE too (Rust ignores it in its own processes; a child it starts
/// gets the default, as with `std::process::Command`). Ignored signals stay
/// ignored, as across any exec. Runs in the child: async-signal-safe.
fn reset_signal_handlers() {
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: all-zero bytes are a valid `sigaction` (SIG_DFL, no
        // flags, an empty mask).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: with a null new action, `sigaction` only writes the
        // current one into `old` on this frame. Numbers glibc reserves for
        // itself fail with EINVAL.
        if unsafe { libc::sigaction(signal, ptr::null(), &mut old) } != 0 {
            continue;
        }
        let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if handled || (signal == libc::SIGPIPE && old.sa_sigaction == libc::SIG_IGN) {
            // SAFETY: a zeroed sigaction is SIG_DFL (0) with no flags and
            // an empty mask.
            let default: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: sigaction only reads `default`, on this frame.
            unsafe { libc::sigaction(signal, &default, ptr::null_mut()) };
        }
    }
}

/// Waits for a child that has exited (it failed before its exec).
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into `status` on this frame.
        let result = unsafe { libc::waitpid(pid, &mut status, 0) };
        if result >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// An anonymous mapping for the child's stack, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base };
        // The lowest page traps an overflow instead of running into
        // whatever is mapped below.
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, page_size(), libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest address of the mapping (stacks grow down on every
    /// architecture this crate builds for); 16-byte aligned, as the mapping
    /// is page-aligned and its size a multiple of 16.
    fn top(&self) -> *mut libc::c_void {
        self.base.cast::<u8>().wrapping_add(STACK_SIZE).cast()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; the child that
        // used it has executed or exited.
        unsafe { libc::munmap(self.base, STACK_SIZE) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf takes a plain integer.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Every signal blocked in the calling thread until dropped.
struct BlockedSignals {
    previous: libc::sigset_t,
}

impl BlockedSignals {
    fn all() -> io::Result<BlockedSignals> {
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut previous = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset initialises `all`; pthread_sigmask reads it and
        // writes the previous mask into `previous`; both live on this frame.
        let result = unsafe {
            libc::sigfillset(all.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), previous.as_mut_ptr())
        };
        if result != 0 {
            return Err(io::Error::from_raw_os_error(result));
        }
        Ok(BlockedSignals {
            // SAFETY: initialised by the successful call above.
            previous: unsafe { previous.assume_init() },
        })
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `all`, owned by `self`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_failure_comes_back_as_the_spawn_error() {
        let mut work = || io::Error::from_raw_os_error(libc::ENOEXEC);
        // SAFETY: the closure makes no call at all.
        let err = unsafe { spawn(&mut work) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOEXEC));
    }

    #[test]
    fn the_child_runs_with_this_process_memory_until_it_exits() {
        // The child writes into the parent's memory: proof of CLONE_VM,
        // and that the call returned only after the child was done.
        let mut seen = 0u32;
        let marker = ptr::from_mut(&mut seen);
        let mut work = || {
            // SAFETY: `marker` points to `seen`, alive on the parent's
            // suspended frame.
            unsafe { ptr::write_volatile(marker, 7) };
            io::Error::from_raw_os_error(libc::EPERM)
        };
        // SAFETY: the closure writes one integer and makes no call.
        let err = unsafe { spawn(&mut work) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // SAFETY: reading a local written through a raw pointer.
        assert_eq!(unsafe { ptr::read_volatile(&seen) }, 7);
    }
}
