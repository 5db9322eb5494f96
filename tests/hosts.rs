//! Clients on other hosts: network namespaces over veth links (with a rate), an ssh host
//! through a stand-in for ssh, and hosts that fail or did not overlap. Namespaces need
//! root (CAP_NET_ADMIN); where they cannot be made, those tests say why and pass.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ringbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringbench"))
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

/// Namespaces and links a sweep with this pid made that still exist.
fn leftovers(pid: u32) -> Vec<String> {
    let list = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut left: Vec<String> = list(&["netns", "list"])
        .lines()
        .filter(|l| l.starts_with(&format!("ringbench-{pid}-")))
        .map(String::from)
        .collect();
    let link = format!("rb{}", pid % 10_000_000);
    left.extend(list(&["-o", "link", "show"]).lines().filter(|l| l.contains(&format!(" {link}s"))).map(String::from));
    left
}

fn sweep(out: &Path, extra: &[&str]) -> Child {
    ringbench()
        .args(["matrix", "--no-probe", "--repeats", "1", "--min-run-s", "0", "--backends", "epoll,uring", "--out"])
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn overall(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(dir.join("overall.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| headers.iter().map(String::from).zip(rec.unwrap().iter().map(String::from)).collect())
        .collect()
}

fn num(row: &std::collections::HashMap<String, String>, col: &str) -> f64 {
    row.get(col).unwrap_or_else(|| panic!("no column {col}")).parse().unwrap_or_else(|_| panic!("{col}: {row:?}"))
}

/// Two namespaces, one shaped to 100 Mbit/s, against both backends: every output, per-host
/// columns, the shaped host held to its rate, and nothing left behind.
#[test]
fn a_sweep_from_two_namespaces_reports_each_host_and_the_rate_limit_and_leaves_nothing() {
    if !netns_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = sweep(
        dir.path(),
        &[
            "--connections",
            "10",
            "--requests",
            "20",
            "--size",
            "65536",
            "--client-hosts",
            "netns:a,netns:b:rate=100mbit",
        ],
    );
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(leftovers(pid), Vec::<String>::new(), "left behind");
    for f in ["overall.csv", "overall.json", "summary.md", "env.json", "plots/throughput.png"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let rows = overall(dir.path());
    assert_eq!(rows.len(), 2);
    // 100 Mbit/s both ways carries at most 190 round trips of 64 KiB a second.
    let limit_rps = 100e6 / 8.0 / 65536.0;
    for r in &rows {
        assert_eq!(r["status"], "Success", "{r:?}");
        let (a, b) = (num(r, "host_a_throughput_rps"), num(r, "host_b_throughput_rps"));
        assert!(b <= limit_rps * 1.1, "the shaped host did {b:.0} req/s, over its {limit_rps:.0}");
        assert!(a > 3.0 * b, "the unshaped host ({a:.0} req/s) was not faster than the shaped one ({b:.0})");
        assert_eq!((num(r, "host_a_connections"), num(r, "host_b_connections")), (5.0, 5.0));
    }
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("## Client hosts") && md.contains("| epoll | 10 | b | 5 |"), "{md}");
    let server = std::fs::read_to_string(dir.path().join("raw/epoll_c10_s65536_r1.client-a.json")).unwrap();
    assert!(server.contains("\"server\": \"198.18.0.1:"), "the server listened on the link's address: {server}");
}

/// Ctrl-C in the middle of a namespaced sweep: exit 130 and nothing left behind.
#[test]
fn ctrl_c_mid_sweep_removes_every_namespace_and_link() {
    if !netns_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = sweep(
        dir.path(),
        &["--connections", "20", "--duration", "20", "--client-hosts", "netns:a:rate=10mbit,netns:b", "--server-netns"],
    );
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leftovers(pid).len() < 3 {
        assert!(Instant::now() < deadline, "the sweep never made its namespaces");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?} to stop", t.elapsed());
    assert_eq!(leftovers(pid), Vec::<String>::new(), "left behind after Ctrl-C");
}

/// netem is not in every kernel: delay= is applied where it is, and refused in one line
/// (nothing left behind) where it is not — never silently ignored.
#[test]
fn delay_without_netem_is_refused_not_ignored() {
    if !netns_allowed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let child = sweep(dir.path(), &["--quick", "--client-hosts", "netns:a:delay=5ms"]);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(leftovers(pid), Vec::<String>::new());
    if out.status.success() {
        eprintln!("this kernel has netem: delay= was applied");
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("netem") && err.contains("delay="), "{err}");
}

/// A stand-in for ssh: drops the host name and runs the command line through sh, as sshd
/// would.
fn fake_ssh(dir: &Path) -> String {
    let path = dir.join("fake-ssh");
    std::fs::write(&path, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// An ssh host (through the stand-in) beside a local one: both start together — within
/// 50 ms — and merge into one point; a host whose ringbench is missing is reported.
#[test]
fn an_ssh_host_starts_with_a_local_one_and_merges_and_a_broken_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = fake_ssh(dir.path());
    let out = dir.path().join("ok");
    let args = |remote: &str| -> Vec<String> {
        [
            "--connections",
            "40",
            "--requests",
            "50",
            "--client-hosts",
            "local,ssh:tester@standin",
            "--ssh-command",
            &ssh,
            "--remote-ringbench",
            remote,
            "--server-bind",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec()
    };
    let exe = env!("CARGO_BIN_EXE_ringbench");
    let run = sweep(&out, &args(exe).iter().map(String::as_str).collect::<Vec<_>>()).wait_with_output().unwrap();
    assert!(run.status.success(), "{}", text(&run));
    for r in overall(&out) {
        assert_eq!((r["status"].as_str(), num(&r, "connections")), ("Success", 40.0), "{r:?}");
        assert_eq!((num(&r, "host_local_connections"), num(&r, "host_standin_connections")), (20.0, 20.0));
    }
    for backend in ["epoll", "uring"] {
        let start = |label: &str| -> i64 {
            let p = out.join(format!("raw/{backend}_c40_s64_r1.client-{label}.json"));
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v["measured_start_unix_us"].as_i64().unwrap()
        };
        let skew_us = (start("local") - start("standin")).abs();
        eprintln!("{backend}: the local and the ssh host started {skew_us} µs apart");
        assert!(skew_us < 50_000, "{backend}: the hosts started {skew_us} µs apart");
    }
    let broken = dir.path().join("broken");
    let run = sweep(&broken, &args("/nonexistent/ringbench").iter().map(String::as_str).collect::<Vec<_>>())
        .wait_with_output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    let md = std::fs::read_to_string(broken.join("summary.md")).unwrap();
    assert!(md.contains("client host standin"), "the failed host is named: {md}");
    assert!(overall(&broken).iter().all(|r| r["status"] == "Fail"));
}

/// Files of two hosts whose measured phases did not overlap: reported, not merged.
#[test]
fn hosts_whose_phases_did_not_overlap_are_reported_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = fake_ssh(dir.path());
    let out = dir.path().join("sweep");
    let run = sweep(
        &out,
        &[
            "--connections",
            "10",
            "--requests",
            "20",
            "--client-hosts",
            "local,ssh:late",
            "--ssh-command",
            &ssh,
            "--remote-ringbench",
            env!("CARGO_BIN_EXE_ringbench"),
            "--server-bind",
            "127.0.0.1",
        ],
    )
    .wait_with_output()
    .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    // Move one host's phase an hour later, as if it had started on its own.
    for e in std::fs::read_dir(out.join("raw")).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".client-late.json") {
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            for k in ["measured_start_unix_us", "measured_end_unix_us"] {
                v[k] = (v[k].as_u64().unwrap() + 3_600_000_000).into();
            }
            std::fs::write(&p, v.to_string()).unwrap();
        }
    }
    let report = ringbench().arg("report").arg(&out).output().unwrap();
    assert!(report.status.success(), "{}", text(&report));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("client host late not merged: its measured phase overlapped the others' by 0 %"), "{md}");
    assert!(overall(&out).iter().all(|r| r["status"] == "Fail" && num(r, "connections") == 10.0));
}
