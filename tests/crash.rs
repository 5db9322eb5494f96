//! Nothing left behind after a crash: a sweep killed with SIGKILL (as the OOM killer or a
//! closed terminal would) leaves no server, target (nor a target's own children), client
//! or namespace running; the next sweep removes what an earlier dead one left and never
//! shares its addresses; and the report never flatters what it could not measure.
//! Namespaces need root: where they cannot be made, those tests say why and pass.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ringbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringbench"))
}

/// Processes that carry the sweep `pid`'s mark in their environment (every process a
/// sweep starts does, and their children too).
fn marked(pid: u32) -> Vec<String> {
    let mark = format!("RINGBENCH_SWEEP={pid}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == pid.to_string() {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        if env.split(|&b| b == 0).any(|v| v == mark.as_bytes()) {
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
            // A zombie has no command line: it is gone but for its exit status.
            if !cmd.is_empty() {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

/// Waits until `cond` holds or `limit` passes; returns whether it held.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn start(out: &Path, args: &[&str]) -> Child {
    ringbench()
        .args(["matrix", "--no-probe", "--out"])
        .arg(out)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigkill(child: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// A target whose command leaves a child of its own running beside the server.
fn grandparent_target() -> String {
    let bin = env!("CARGO_BIN_EXE_ringbench");
    format!("grand=sleep 300 & exec {bin} server --backend epoll --workers 1 --bind 127.0.0.1:{{port}}")
}

/// SIGKILL in the middle of paired slices: every server, the target and its own child,
/// and every client are gone within 3 s.
#[test]
fn a_sweep_killed_mid_slice_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let target = grandparent_target();
    let mut sweep = start(
        dir.path(),
        &["--connections", "20", "--engine", "epoll", "--slice-s", "2", "--repeats", "6", "--target", &target],
    );
    let pid = sweep.id();
    let raw = dir.path().join("raw");
    let running = within(Duration::from_secs(30), || raw.join("epoll_c20_s64_r1.server-proc.json").exists());
    assert!(running, "the sweep never finished a slice");
    assert!(marked(pid).len() >= 7, "servers, the target's sleep and clients run: {:?}", marked(pid));
    sigkill(&mut sweep);
    let gone = within(Duration::from_secs(3), || marked(pid).is_empty());
    assert!(gone, "left running 3 s after SIGKILL: {:?}", marked(pid));
}

/// The same with fresh servers (a server and a client per run, the seed's way).
#[test]
fn a_fresh_servers_sweep_killed_mid_run_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut sweep = start(
        dir.path(),
        &["--fresh-servers", "--connections", "20", "--duration", "20", "--repeats", "2", "--backends", "epoll"],
    );
    let pid = sweep.id();
    assert!(within(Duration::from_secs(20), || marked(pid).len() >= 2), "server and client never ran");
    std::thread::sleep(Duration::from_millis(500));
    sigkill(&mut sweep);
    let gone = within(Duration::from_secs(3), || marked(pid).is_empty());
    assert!(gone, "left running 3 s after SIGKILL: {:?}", marked(pid));
}

/// Whether this process may create network namespaces; prints why not.
fn netns_allowed() -> bool {
    let name = format!("ringbench-probe-{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &name]).output().is_ok_and(|o| o.status.success());
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    } else {
        eprintln!("skipped: cannot create a network namespace here (needs root and iproute2)");
    }
    ok
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).output().is_ok_and(|o| o.status.success())
}

fn netns_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
}

/// SIGKILL of a sweep with client namespaces: its guard removes them and their links.
#[test]
fn a_sweep_killed_with_namespaces_leaves_none() {
    if !netns_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sweep = start(
        dir.path(),
        &[
            "--connections",
            "10",
            "--engine",
            "epoll",
            "--slice-s",
            "2",
            "--repeats",
            "6",
            "--client-hosts",
            "netns:a,netns:b",
        ],
    );
    let pid = sweep.id();
    let mine = format!("ringbench-{pid}-");
    assert!(within(Duration::from_secs(20), || netns_named(&mine).len() == 2), "no namespaces were made");
    assert!(within(Duration::from_secs(20), || dir.path().join("raw/epoll_c10_s64_r1.server-proc.json").exists()));
    sigkill(&mut sweep);
    assert!(within(Duration::from_secs(5), || netns_named(&mine).is_empty()), "left: {:?}", netns_named(&mine));
    let link = format!("/sys/class/net/rb{}s0", pid % 10_000_000);
    // A namespace's devices are freed by the kernel's cleanup work after `ip netns del`.
    assert!(within(Duration::from_secs(5), || !Path::new(&link).exists()), "{link} left behind");
    assert!(within(Duration::from_secs(3), || marked(pid).is_empty()), "{:?}", marked(pid));
}

/// A process id nothing runs as.
fn dead_pid() -> u32 {
    (4_000_000..4_100_000).find(|p| !Path::new(&format!("/proc/{p}")).exists()).unwrap()
}

/// What a dead sweep left (a namespace, a veth link with its address) is removed by the
/// next one, one line each; and an address a live sweep holds is not taken again.
#[test]
fn the_next_sweep_removes_what_a_dead_one_left_and_never_shares_live_addresses() {
    if !netns_allowed() {
        return;
    }
    let dead = dead_pid();
    let (ns, near, far) = (format!("ringbench-{dead}-x"), format!("rb{dead}s0"), format!("rb{dead}c0"));
    // An earlier failed run of this test may have left them: start clean.
    let _ = (ip(&["netns", "del", &ns]), ip(&["link", "del", &near]));
    assert!(ip(&["netns", "add", &ns]));
    assert!(ip(&["link", "add", &near, "type", "veth", "peer", "name", &far, "netns", &ns]));
    assert!(ip(&["addr", "add", "198.18.0.1/24", "dev", &near]) && ip(&["link", "set", &near, "up"]));
    // A live sweep's link (not ours to remove): its subnet must not be reused.
    let live = format!("rbtest{}", std::process::id() % 100_000);
    assert!(ip(&["link", "add", &live, "type", "veth", "peer", "name", &format!("{live}p")]));
    assert!(ip(&["addr", "add", "198.18.1.1/24", "dev", &live]) && ip(&["link", "set", &live, "up"]));
    let dir = tempfile::tempdir().unwrap();
    let out = ringbench()
        .args(["matrix", "--no-probe", "--quick", "--backends", "epoll", "--client-hosts", "netns:a", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = ip(&["link", "del", &live]);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("removed namespace {ns}, left by an earlier sweep (process {dead} is gone)")),
        "{err}"
    );
    assert!(err.contains(&format!("removed link {near}")) || !Path::new(&format!("/sys/class/net/{near}")).exists());
    assert!(netns_named(&ns).is_empty() && !Path::new(&format!("/sys/class/net/{near}")).exists());
    let client: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("raw/epoll_c50_s64_r1.client-a.json")).unwrap())
            .unwrap();
    let server = client["server"].as_str().unwrap();
    assert!(server.starts_with("198.18.0.1:"), "the dead sweep's subnet is free again: {server}");
}

/// On one CPU there is no other CPU to wake a thread on: the probe says so instead of
/// passing a same-CPU wake-up off as a cross-CPU one.
#[test]
fn the_probe_on_one_cpu_says_what_it_could_not_measure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("probe.json");
    let Ok(out) = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_ringbench"), "probe", "--json"])
        .arg(&json)
        .output()
    else {
        eprintln!("skipped: no taskset (util-linux) to give the probe one CPU");
        return;
    };
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("cross_cpu_wakeup") && all.contains("not measured (one CPU)"), "{all}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["costs"].as_array().unwrap().iter().all(|c| c["name"] != "cross_cpu_wakeup"), "{v}");
    assert_eq!(v["not_measured"][0]["name"], "cross_cpu_wakeup");
}

/// `--target` adds to the default backends; `--backends none` keeps the targets alone.
#[test]
fn targets_add_to_the_default_backends_unless_backends_none() {
    let bin = env!("CARGO_BIN_EXE_ringbench");
    let target = format!("peer={bin} server --backend threads --bind 127.0.0.1:{{port}}");
    let servers = |extra: &[&str]| -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let out = ringbench()
            .args(["matrix", "--no-probe", "--quick", "--connections", "5", "--target", &target, "--out"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut r = csv::Reader::from_path(dir.path().join("overall.csv")).unwrap();
        r.records().map(|x| x.unwrap()[0].to_string()).collect()
    };
    assert_eq!(servers(&[]), ["epoll", "uring", "peer"]);
    assert_eq!(servers(&["--backends", "none", "--baseline", "peer"]), ["peer"]);
    let out = ringbench().args(["matrix", "--backends", "none"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backends none needs at least one --target"));
}
