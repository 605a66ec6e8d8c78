//! Scripts run in a Landlock sandbox where the kernel allows it: they may read and run
//! the system, their interpreter and the scripts folder, and write only their own
//! temporary folder and, on a local lake, their tenant's lake folder. The task table,
//! the server's files and other tenants' data are out of reach. They hold no capability,
//! even as root (`privileges`).
//!
//! The runner cannot restrict itself (it needs the task table), so it starts the script
//! through itself: `lancer-runner sandbox <mode> --read P --write P -- program args...`
//! restricts that process and then `exec`s the script, which inherits the restriction.
//! This needs no `unsafe` `pre_exec` hook.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, RulesetStatus, path_beneath_rules,
};

pub mod namespaces;
mod privileges;

/// The runner's argument that starts a sandboxed script.
pub const SUBCOMMAND: &str = "sandbox";

/// The Landlock ABI the policy is written for: files, `refer` and `truncate` (Linux 6.2).
const ABI_USED: ABI = ABI::V3;

/// System folders every script may read and run.
const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/dev",
];

/// Device files every script may write.
const SYSTEM_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/shm", "/dev/tty"];

/// `LANCER_SANDBOX`: whether scripts must, may or must not run sandboxed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// Run scripts unconfined: no Landlock, no namespaces of their own, capabilities kept.
    Off,
    /// Sandbox where the kernel supports Landlock; run unsandboxed elsewhere.
    #[default]
    BestEffort,
    /// Refuse to run a script the kernel cannot sandbox.
    Required,
}

/// A `LANCER_SANDBOX` that names no mode.
#[derive(Debug, thiserror::Error)]
#[error("LANCER_SANDBOX must be off, best-effort or required, not '{0}'")]
pub struct UnknownSandboxMode(String);

impl std::str::FromStr for SandboxMode {
    type Err = UnknownSandboxMode;
    fn from_str(text: &str) -> std::result::Result<Self, UnknownSandboxMode> {
        match text {
            "off" => Ok(Self::Off),
            "best-effort" => Ok(Self::BestEffort),
            "required" => Ok(Self::Required),
            other => Err(UnknownSandboxMode(other.to_owned())),
        }
    }
}

impl SandboxMode {
    /// The mode as `LANCER_SANDBOX` spells it, and as `from_str` reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::BestEffort => "best-effort",
            Self::Required => "required",
        }
    }
}

/// What a sandboxed script may touch, besides the system folders.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Folders it may read and run, but not change: the scripts folder, its interpreter's.
    pub read: Vec<PathBuf>,
    /// Folders it may change as it likes: its own temporary folder.
    pub write: Vec<PathBuf>,
    /// Folders the server reads back (the tenant's lake folder): the script writes, renames
    /// and removes files and folders there, but makes no symbolic link, device, pipe or
    /// socket that the server could be led through.
    pub lake: Vec<PathBuf>,
}

/// Whether this kernel enforces the whole policy: what a task records as `sandbox`.
pub fn enforceable() -> bool {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI_USED))
        .and_then(|ruleset| ruleset.create())
        .is_ok()
}

/// The command line that runs `program args` under `policy` through the runner binary.
pub fn wrap(
    runner: &Path,
    mode: SandboxMode,
    policy: &Policy,
    program: &[OsString],
) -> Vec<OsString> {
    let mut line = vec![
        runner.as_os_str().to_owned(),
        SUBCOMMAND.into(),
        mode.as_str().into(),
    ];
    let lists = [
        ("--read", &policy.read),
        ("--write", &policy.write),
        ("--lake", &policy.lake),
    ];
    for (flag, paths) in lists {
        for path in paths {
            line.push(flag.into());
            line.push(path.as_os_str().to_owned());
        }
    }
    line.push("--".into());
    line.extend(program.iter().cloned());
    line
}

/// `lancer-runner sandbox <mode> [--read P | --write P | --lake P]... -- program args...`:
/// where the kernel allows, starts the script in namespaces of its own (`namespaces`) and
/// ends as it ends; elsewhere restricts this process, then becomes the program.
pub fn exec_main(args: Vec<OsString>) -> ExitCode {
    let (mode, policy, program) = match parse(args.clone()) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("[lancer] sandbox: {why}");
            return ExitCode::from(2);
        }
    };
    if mode != SandboxMode::Off {
        if let Err(why) = die_with_the_runner() {
            eprintln!("[lancer] sandbox: {why}");
            return ExitCode::from(126);
        }
        match namespaces::enter() {
            Ok(()) => return namespaces::supervise(&args),
            Err(why) => {
                eprintln!("[lancer] sandbox: the script shares the server's namespaces ({why})")
            }
        }
    }
    if let Err(code) = confine(mode, &policy) {
        return code;
    }
    let Some((first, rest)) = program.split_first() else {
        eprintln!("[lancer] sandbox: no program to run");
        return ExitCode::from(2);
    };
    if let Err(why) = die_with_the_runner().and_then(|()| drop_privileges(mode)) {
        eprintln!("[lancer] sandbox: {why}");
        return ExitCode::from(126);
    }
    let err = std::process::Command::new(first).args(rest).exec();
    eprintln!("[lancer] cannot start the script: {}", err.kind());
    ExitCode::from(127)
}

/// The script must not outlive its runner: a runner killed with -9 can stop nothing, and
/// the task's retry would then run beside the old attempt. The kernel sends SIGKILL to
/// this process (the script, once it execs) when the runner dies, whoever started the
/// runner: the local dispatcher, or a Ray job.
fn die_with_the_runner() -> std::result::Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|err| format!("cannot tie the script to its runner: {err}"))?;
    // The runner may have died before the line above: then the parent is already gone.
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        return Err("the runner is gone".into());
    }
    Ok(())
}

/// Every capability gone before the script starts, unless the sandbox is off.
fn drop_privileges(mode: SandboxMode) -> std::result::Result<(), String> {
    if mode == SandboxMode::Off {
        return Ok(());
    }
    privileges::drop_all().map_err(|why| format!("cannot drop the script's capabilities: {why}"))
}

/// `lancer-runner sandbox-inner ...`: the first process in the script's namespaces, with
/// the arguments `exec_main` got. Mounts their own `/proc` and `/dev/shm`, confines
/// itself, and runs the script.
pub fn inner_main(args: Vec<OsString>) -> ExitCode {
    let (mode, policy, program) = match parse(args) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("[lancer] sandbox: {why}");
            return ExitCode::from(2);
        }
    };
    // Mounting over /proc is only ever for a namespace of the script's own.
    if std::process::id() != 1 {
        eprintln!(
            "[lancer] sandbox: {} runs only as the first process of new namespaces",
            namespaces::INNER
        );
        return ExitCode::from(2);
    }
    // The outer step held its signals, and a signal mask passes to children: the script
    // must start with none held.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    if let Err(why) = namespaces::private_mounts() {
        eprintln!("[lancer] sandbox: {why}");
        return ExitCode::from(126);
    }
    if let Err(code) = confine(mode, &policy) {
        return code;
    }
    if let Err(why) = die_with_the_runner().and_then(|()| drop_privileges(mode)) {
        eprintln!("[lancer] sandbox: {why}");
        return ExitCode::from(126);
    }
    namespaces::run_script(&program)
}

/// Landlock on this thread and what it starts, as `mode` asks; the exit code if it must
/// not run.
fn confine(mode: SandboxMode, policy: &Policy) -> std::result::Result<(), ExitCode> {
    if mode == SandboxMode::Off {
        return Ok(());
    }
    match restrict(policy, mode) {
        Ok(RulesetStatus::FullyEnforced) => Ok(()),
        Ok(_) if mode == SandboxMode::BestEffort => Ok(()),
        Ok(_) | Err(_) => {
            eprintln!(
                "[lancer] LANCER_SANDBOX=required, and this kernel cannot sandbox the script (Landlock ABI 3 or newer is needed)"
            );
            Err(ExitCode::from(126))
        }
    }
}

type Parsed = (SandboxMode, Policy, Vec<OsString>);

fn parse(args: Vec<OsString>) -> std::result::Result<Parsed, String> {
    let mut args = args.into_iter();
    let mode = args
        .next()
        .and_then(|m| m.to_str().map(str::to_owned))
        .ok_or("no mode")?
        .parse::<SandboxMode>()
        .map_err(|err| err.to_string())?;
    let mut policy = Policy::default();
    while let Some(flag) = args.next() {
        let list = match flag.to_str() {
            Some("--") => return Ok((mode, policy, args.collect())),
            Some("--read") => &mut policy.read,
            Some("--write") => &mut policy.write,
            Some("--lake") => &mut policy.lake,
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        list.push(args.next().ok_or("a path is missing")?.into());
    }
    Err("no '--' before the program".into())
}

/// Restricts this thread (and what it `exec`s) to the policy.
fn restrict(
    policy: &Policy,
    mode: SandboxMode,
) -> std::result::Result<RulesetStatus, RulesetError> {
    let level = match mode {
        SandboxMode::Required => CompatLevel::HardRequirement,
        _ => CompatLevel::BestEffort,
    };
    let read = SYSTEM_READ
        .iter()
        .map(OsStr::new)
        .map(Path::new)
        .chain(policy.read.iter().map(PathBuf::as_path));
    let write = SYSTEM_WRITE
        .iter()
        .map(OsStr::new)
        .map(Path::new)
        .chain(policy.write.iter().map(PathBuf::as_path));
    let status = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(ABI_USED))?
        .create()?
        // Paths that do not exist on this machine (/lib32, /dev/tty) are skipped.
        .add_rules(path_beneath_rules(read, AccessFs::from_read(ABI_USED)))?
        .add_rules(path_beneath_rules(write, AccessFs::from_all(ABI_USED)))?
        .add_rules(path_beneath_rules(&policy.lake, lake_access()))?
        .restrict_self()?;
    Ok(status.ruleset)
}

/// Every right on a lake folder but making links and special files. A hard link needs
/// `refer` on the source's folder too, which nothing outside the script's own folders
/// grants, so no file from elsewhere can get a second name in the lake.
fn lake_access() -> landlock::BitFlags<AccessFs> {
    AccessFs::from_all(ABI_USED)
        & !(AccessFs::MakeSym
            | AccessFs::MakeChar
            | AccessFs::MakeBlock
            | AccessFs::MakeFifo
            | AccessFs::MakeSock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_command_line_parses_back_to_the_same_policy_and_program() {
        let policy = Policy {
            read: vec!["/opt/scripts".into()],
            write: vec!["/tmp/task".into()],
            lake: vec!["/lake/tenants/a".into()],
        };
        let program: Vec<OsString> = vec!["python3".into(), "-c".into(), "--read".into()];
        let line = wrap(
            Path::new("/bin/runner"),
            SandboxMode::Required,
            &policy,
            &program,
        );
        assert_eq!(line[1], SUBCOMMAND);
        let (mode, parsed, rest) = parse(line[2..].to_vec()).expect("parses");
        assert_eq!(mode, SandboxMode::Required);
        assert_eq!(
            (parsed.read, parsed.write, parsed.lake),
            (policy.read, policy.write, policy.lake)
        );
        assert_eq!(rest, program, "the program's own flags are left alone");
        assert!(parse(vec!["sometimes".into()]).is_err());
        assert!(parse(vec!["off".into(), "--read".into()]).is_err());
    }
}
