//! A sandboxed script's own PID, IPC and mount namespaces, where the kernel allows: it
//! sees no process but its own (not the server, whose `/proc/<pid>/environ` holds the
//! keys, nor other tenants' runners, which it could otherwise signal), has a `/proc` and a
//! `/dev/shm` of its own, and no System V IPC in common with anyone. As root the runner
//! creates them directly; otherwise inside a user namespace of its own, mapped to its own
//! uid, so file access is unchanged.
//!
//! A PID namespace takes effect for the children of the process that made it, so the
//! sandbox runs in two steps: the runner's `sandbox` step makes the namespaces and starts
//! this binary again as their first process (`sandbox-inner`), which mounts the new
//! `/proc` and `/dev/shm`, applies Landlock and starts the script. The first process of a
//! PID namespace ignores signals it has no handler for, so the outer step passes SIGTERM
//! and SIGINT on over a pipe, and the inner one hands them to the script; each step's exit
//! mirrors the script's (a script killed by signal `s` ends the outer step by `s` too).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill, raise};
use nix::unistd::{Pid, getegid, geteuid};

/// The runner's argument for the first process inside a script's namespaces.
pub const INNER: &str = "sandbox-inner";

/// Whether scripts on this machine will get namespaces of their own: as root always, else
/// where unprivileged user namespaces are allowed. What a task records.
pub fn available() -> bool {
    geteuid().is_root()
        || std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .is_ok_and(|max| max.trim() != "0")
}

/// New PID, IPC and mount namespaces for this process's children (and a user namespace
/// first when not root). This process must still be single-threaded.
pub fn enter() -> Result<(), String> {
    let flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNS;
    if geteuid().is_root() {
        return unshare(flags).map_err(|err| format!("unshare: {err}"));
    }
    let (uid, gid) = (geteuid(), getegid());
    unshare(flags | CloneFlags::CLONE_NEWUSER).map_err(|err| format!("unshare: {err}"))?;
    // Root inside maps to this user outside: the inner step may mount, and files are
    // reached with this user's rights as before.
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|err| format!("{file}: {err}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))
}

/// The outer step: starts the inner one with `args`, passes on SIGTERM and SIGINT, and
/// ends as the script ended.
pub fn supervise(args: &[OsString]) -> ExitCode {
    // One thread only: a process whose children go to another PID namespace cannot start
    // threads. Signals are held and taken in turn, the child's end among them.
    let signals: SigSet = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD]
        .into_iter()
        .collect();
    if let Err(err) = signals.thread_block() {
        eprintln!("[lancer] sandbox: cannot hold signals: {err}");
        return ExitCode::from(126);
    }
    let inner = std::env::current_exe().and_then(|runner| {
        Command::new(runner)
            .arg(INNER)
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
    });
    let mut inner = match inner {
        Ok(inner) => inner,
        Err(err) => {
            eprintln!("[lancer] sandbox: cannot start the script's namespaces: {err}");
            return ExitCode::from(127);
        }
    };
    let mut control = inner.stdin.take();
    loop {
        match inner.try_wait() {
            Ok(Some(status)) => return mirror(status),
            Ok(None) => {}
            Err(err) => {
                eprintln!("[lancer] sandbox: lost the script: {err}");
                return ExitCode::from(1);
            }
        }
        let byte = match signals.wait() {
            Ok(Signal::SIGINT) => b'I',
            Ok(Signal::SIGTERM) => b'T',
            _ => continue,
        };
        if let Some(pipe) = control.as_mut()
            && pipe.write_all(&[byte]).is_err()
        {
            control = None;
        }
    }
}

/// Ends this process as the inner step says the script ended: its exit code, or (`128 + s`,
/// as shells write it) killed by signal `s`.
fn mirror(status: ExitStatus) -> ExitCode {
    let code = shell_code(status);
    if let Some(signal) = (129..160)
        .contains(&code)
        .then(|| Signal::try_from(code - 128).ok())
        .flatten()
    {
        let _ = SigSet::all().thread_unblock();
        let _ = raise(signal);
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// An exit as a shell writes it: the code, or `128 + s` for a process killed by signal `s`.
fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

/// The inner step's own mounts: every mount private to the namespace, then a `/proc` that
/// shows only the namespace's processes and an empty `/dev/shm`.
pub fn private_mounts() -> Result<(), String> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|err| format!("making mounts private: {err}"))?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), hardened, none)
        .map_err(|err| format!("mounting /proc: {err}"))?;
    mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=256m"),
    )
    .map_err(|err| format!("mounting /dev/shm: {err}"))
}

/// The inner step, once confined: runs the script, hands it the signals the outer step
/// passes on (and SIGKILL if the outer step goes), and ends with its exit code.
pub fn run_script(program: &[OsString]) -> ExitCode {
    let Some((first, rest)) = program.split_first() else {
        eprintln!("[lancer] sandbox: no program to run");
        return ExitCode::from(2);
    };
    let mut script = match Command::new(first).args(rest).stdin(Stdio::null()).spawn() {
        Ok(script) => script,
        Err(err) => {
            eprintln!("[lancer] cannot start the script: {}", err.kind());
            return ExitCode::from(127);
        }
    };
    let pid = Pid::from_raw(script.id() as i32);
    std::thread::spawn(move || {
        let mut control = std::io::stdin();
        let mut byte = [0u8; 1];
        loop {
            let signal = match control.read(&mut byte) {
                Ok(1) if byte[0] == b'I' => Signal::SIGINT,
                Ok(1) => Signal::SIGTERM,
                // The outer step is gone: so is the runner.
                _ => Signal::SIGKILL,
            };
            let _ = kill(pid, signal);
            if signal == Signal::SIGKILL {
                return;
            }
        }
    });
    match script.wait() {
        Ok(status) => ExitCode::from(u8::try_from(shell_code(status)).unwrap_or(1)),
        Err(err) => {
            eprintln!("[lancer] sandbox: lost the script: {err}");
            ExitCode::from(1)
        }
    }
}
