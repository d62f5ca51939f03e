//! Child processes that do not outlive their parent: load-generator children and brokers.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// `program` pinned to `cpus` (a taskset CPU list) with `taskset -c`, which execs it, so the
/// child's PID is the program's; `all` runs it unpinned.
pub fn pinned(cpus: &str, program: &Path) -> Command {
    if cpus == "all" {
        return Command::new(program);
    }
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpus).arg(program);
    command
}

/// Checks that `taskset -c cpus` works here (the CPUs exist and may be used).
pub fn check_cpus(cpus: &str) -> Result<(), String> {
    if cpus == "all" {
        return Ok(());
    }
    let status = Command::new("taskset")
        .args(["-c", cpus, "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e} (install util-linux, or pass all)"))?;
    if !status.success() {
        return Err(format!("taskset -c {cpus} fails: no such CPUs here"));
    }
    Ok(())
}

/// The kernel sends `signal` to the child when the thread that spawned it ends (the process
/// being killed included), so that nothing this program started keeps running after it. The
/// spawning thread must live as long as the child (the main thread, or a test's thread).
pub fn dies_with_parent(command: &mut Command, signal: libc::c_int) -> &mut Command {
    // SAFETY: getpid before the fork is an ordinary call.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, raise); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::raise(signal);
            }
            Ok(())
        })
    }
}

pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the PID is our own unreaped child's,
    // so it cannot have been reused.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`; reaps it.
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}
