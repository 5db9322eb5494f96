//! Nothing a sweep starts outlives it, however the sweep ends.
//!
//! Two mechanisms, because each covers what the other cannot:
//!
//! - every process a sweep starts gets `PR_SET_PDEATHSIG` ([`dies_with_us`]): the kernel
//!   kills it when the sweep's thread that started it exits — a crash, `kill -9`, the OOM
//!   killer, a closed terminal — and one whose parent died before that took effect does
//!   not start at all;
//! - a child's own children (a target's workers, a shell's background job) are not
//!   covered by that, and neither are network namespaces and links. So every process group
//!   the sweep starts, and every namespace and link it makes, is told to a guard: a small
//!   `ringbench guard` process in a group of its own (a terminal's Ctrl-C does not reach
//!   it) reading a pipe from the sweep. When the pipe closes without `done`, the sweep is
//!   gone: the guard kills each group still there and removes each namespace and link,
//!   one line each, and exits.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;

use ringbench_backends::sys;

/// The pipe to the guard, while one runs.
static GUARD: Mutex<Option<ChildStdin>> = Mutex::new(None);

/// Makes `cmd`'s process die with this one (see the module docs).
pub fn dies_with_us(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as i32;
    // SAFETY: the hook makes two syscalls (prctl, getppid) and no allocation or lock, as
    // is required between fork and exec.
    unsafe { cmd.pre_exec(move || sys::die_with_parent(parent)) }
}

fn tell(line: &str) {
    let mut g = GUARD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pipe) = g.as_mut() {
        // A guard that is gone cannot help; the sweep goes on without it.
        if writeln!(pipe, "{line}").and_then(|()| pipe.flush()).is_err() {
            *g = None;
        }
    }
}

/// Process group `pgid` was started: the guard kills it if the sweep dies.
pub fn group(pgid: i32) {
    tell(&format!("group {pgid}"));
}

/// Process group `pgid` has ended (its leader was reaped): nothing to kill any more.
pub fn ungroup(pgid: i32) {
    tell(&format!("ungroup {pgid}"));
}

/// A network namespace was made; the guard removes it if the sweep dies.
pub fn netns(name: &str) {
    tell(&format!("netns {name}"));
}

/// A network link was made in this namespace; the guard removes it if the sweep dies.
pub fn link(name: &str) {
    tell(&format!("link {name}"));
}

/// The guard of one sweep: started with [`Guard::start`], told `done` when dropped.
pub struct Guard(());

impl Guard {
    /// Starts the guard (this executable, `guard`), unless it cannot be started, which is
    /// said once: the children's own death signal still holds then.
    pub fn start() -> Guard {
        let started = std::env::current_exe().and_then(|exe| {
            Command::new(exe)
                .arg("guard")
                .arg(std::process::id().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .process_group(0)
                .spawn()
        });
        match started {
            Ok(mut child) => {
                *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = child.stdin.take();
                // Reaped by nobody on purpose: it outlives us only to clean up.
                std::mem::forget(child);
            }
            Err(e) => eprintln!("ringbench matrix: no guard process ({e}); children still die with the sweep"),
        }
        Guard(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        tell("done");
        *GUARD.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The guard's body: collects what the sweep `sweep_pid` reports on `input` until the pipe
/// closes; if it closed without `done`, kills every group still recorded and removes every
/// namespace and link. Returns how many things it had to clean up.
pub fn serve(sweep_pid: u32, input: impl BufRead) -> usize {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: ignoring a signal installs no handler code; the guard must outlive the
        // terminal's signals that end the sweep.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut groups = BTreeSet::new();
    let (mut namespaces, mut links) = (Vec::new(), Vec::new());
    for line in input.lines().map_while(Result::ok) {
        let (word, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match word {
            "done" => return 0,
            "group" => {
                groups.insert(arg.parse::<i32>().unwrap_or(0));
            }
            "ungroup" => {
                groups.remove(&arg.parse::<i32>().unwrap_or(0));
            }
            "netns" => namespaces.push(arg.to_string()),
            "link" => links.push(arg.to_string()),
            _ => {}
        }
    }
    let mut cleaned = 0;
    for pgid in groups.into_iter().filter(|&g| g > 1) {
        // SAFETY: kill(2) of a process group the sweep started; ESRCH if it is gone.
        if unsafe { libc::kill(-pgid, libc::SIGKILL) } == 0 {
            eprintln!("ringbench guard: the sweep (pid {sweep_pid}) is gone; killed process group {pgid}");
            cleaned += 1;
        }
    }
    // Links before namespaces: deleting a veth end takes its peer with it at once, while a
    // deleted namespace's devices go away later, on the kernel's cleanup workqueue.
    for l in &links {
        if std::path::Path::new(&format!("/sys/class/net/{l}")).exists() && remove(&["link", "del", l]) {
            eprintln!("ringbench guard: the sweep (pid {sweep_pid}) is gone; removed link {l}");
            cleaned += 1;
        }
    }
    for ns in namespaces.iter().rev() {
        if remove(&["netns", "del", ns]) {
            eprintln!("ringbench guard: the sweep (pid {sweep_pid}) is gone; removed namespace {ns}");
            cleaned += 1;
        }
    }
    cleaned
}

fn remove(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether process `pid` is a live ringbench (a pid reused by another program is not).
pub fn ringbench_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|&b| b == 0).next().is_some_and(|argv0| String::from_utf8_lossy(argv0).contains("ringbench"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_end_cleans_nothing_and_a_missing_done_kills_the_groups() {
        let mut child = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pgid = child.id() as i32;
        assert_eq!(serve(1, format!("group {pgid}\ndone\n").as_bytes()), 0);
        assert!(child.try_wait().unwrap().is_none(), "done: the group lives");
        assert_eq!(serve(1, format!("group 99999999\ngroup {pgid}\n").as_bytes()), 1);
        assert!(child.wait().unwrap().code().is_none(), "killed by the guard");
        let mut other = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let g = other.id() as i32;
        assert_eq!(serve(1, format!("group {g}\nungroup {g}\n").as_bytes()), 0, "an ended group is left alone");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
