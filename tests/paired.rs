//! Paired slices, the sweep's default: every server up side by side for a point (in
//! blocks with rotated start orders), each with its client connected, slices alternated
//! in rounds; the A/A twin; precision on demand with its stops; servers that burn CPU
//! while idle set apart; a server slower on purpose found slower; and the seed's fresh
//! servers still there. Small counts and short slices: these check behaviour, not speed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

fn ringbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringbench"))
}

/// A small paired sweep into `out` with `extra` arguments.
fn sweep(out: &Path, extra: &[&str]) -> Output {
    ringbench()
        .args(["matrix", "--no-probe", "--engine", "epoll", "--connections", "12", "--slice-s", "0.03", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn overall(dir: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(dir.join("overall.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| headers.iter().map(String::from).zip(rec.unwrap().iter().map(String::from)).collect())
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn csv_rows(path: &Path) -> usize {
    csv::Reader::from_path(path).unwrap().records().count()
}

/// Not a test: the body of helper servers. Does nothing unless `RB_HELPER` is set:
/// `spin` echoes and burns a CPU on a thread of its own all the while.
#[test]
fn helper_server() {
    let Ok(kind) = std::env::var("RB_HELPER") else { return };
    let port: u16 = std::env::var("RB_PORT").unwrap().parse().unwrap();
    assert_eq!(kind, "spin", "unknown helper {kind}");
    std::thread::spawn(|| loop {
        std::hint::spin_loop();
    });
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    for s in l.incoming() {
        let mut s = s.unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
}

fn helper(kind: &str) -> String {
    let me = std::env::current_exe().unwrap();
    format!("{kind}=env RB_HELPER={kind} RB_PORT={{port}} {} helper_server --exact --nocapture", me.display())
}

/// Three servers (the baseline, its A/A twin, uring) up side by side: three blocks, each
/// starting them in another order; every slice's files; each server's log with one row
/// per connection of each block; the calibration and how-sure sections; and `report`
/// rebuilding the tables from raw/ alone, byte for byte.
#[test]
fn a_paired_sweep_keeps_every_server_up_and_reports_how_sure_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["--backends", "epoll,uring", "--aa", "--repeats", "6"]);
    assert!(out.status.success(), "{}", text(&out));
    // The progress says how much is done and about how long is left, up front and per point.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most about") && err.contains("[1/1 points, done] 12 connections"), "{err}");
    let raw = dir.path().join("raw");
    let log = json(&raw.join("c12_s64.slices.json"));
    assert_eq!(log["rounds"], 6);
    assert_eq!(log["stopped"], "fixed rounds");
    let blocks = log["blocks"].as_array().unwrap();
    let orders: Vec<String> = blocks.iter().map(|b| b["start_order"].to_string()).collect();
    assert_eq!(blocks.len(), 3, "one block per server");
    assert_eq!(
        orders,
        [r#"["epoll","epoll-aa","uring"]"#, r#"["epoll-aa","uring","epoll"]"#, r#"["uring","epoll","epoll-aa"]"#],
        "each server starts in each position once"
    );
    assert_eq!(log["slices"].as_array().unwrap().len(), 18);
    for s in log["slices"].as_array().unwrap() {
        for side in ["server_cpus_stolen_share", "client_cpus_stolen_share"] {
            assert!(s[side].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{side}: {s}");
        }
    }
    for server in ["epoll", "epoll-aa", "uring"] {
        for round in 1..=6 {
            let stem = format!("{server}_c12_s64_r{round}");
            let proc = json(&raw.join(format!("{stem}.server-proc.json")));
            assert!(proc["cpu_s"].as_f64().is_some_and(|c| c > 0.0), "{stem}: {proc}");
            assert!(proc["syscalls"].as_u64().is_some_and(|n| n > 0), "{stem}: the backend's own live count");
            let client = std::fs::read_dir(&raw)
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{stem}.client-")))
                .unwrap_or_else(|| panic!("{stem}: no client summary"));
            let c = json(&client.path());
            assert_eq!(c["errors"], 0);
            assert!(c["requests"].as_u64().is_some_and(|n| n > 0));
        }
        for block in 1..=3 {
            let stem = format!("{server}_c12_s64_session{block}");
            assert_eq!(csv_rows(&raw.join(format!("{stem}.server.csv"))), 12, "{stem}: one row per connection");
            assert_eq!(json(&raw.join(format!("{stem}.server-proc.json")))["exit"], "exit 0", "{stem}");
        }
    }
    let rows = overall(dir.path());
    let names: Vec<&str> = rows.iter().map(|r| r["backend"].as_str()).collect();
    assert_eq!(names, ["epoll", "epoll-aa", "uring"]);
    for r in &rows {
        assert_eq!(r["status"], "Success", "{r:?}");
        assert_eq!(r["repeats"], "6");
    }
    for r in &rows[1..] {
        assert_eq!(r["pairs"], "6", "{r:?}");
        assert!(r["precision_reached"].parse::<f64>().is_ok(), "6 pairs give an interval: {r:?}");
        assert!(r["server_cpu_us_per_request_ratio_ci95_lo"].parse::<f64>().is_ok());
    }
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    for section in
        ["## Calibration (A/A): epoll-aa ÷ epoll", "## How sure: paired slices", "median of the ratios", "CPU stolen"]
    {
        assert!(md.contains(section), "{section}: {md}");
    }
    assert!(md.contains("Held 1 at") && md.contains("| 12 | 64 | closed | 0.03 | 6 | 3 × 2 | 0 |"), "{md}");
    // The report is rebuilt from raw/ alone.
    let before: Vec<Vec<u8>> =
        ["overall.csv", "summary.md"].iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect();
    for f in ["overall.csv", "overall.json", "summary.md"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("plots")).unwrap();
    let again = ringbench().arg("report").arg(dir.path()).output().unwrap();
    assert!(again.status.success(), "{}", text(&again));
    for (f, want) in ["overall.csv", "summary.md"].iter().zip(before) {
        assert!(std::fs::read(dir.path().join(f)).unwrap() == want, "{f} rebuilt differently");
    }
    assert!(dir.path().join("plots/ratio_cpu_per_request.png").exists());
}

/// Rounds are added until the intervals are as narrow as asked; a point that cannot get
/// there stops on its rounds or its time and says so.
#[test]
fn precision_on_demand_stops_when_reached_on_max_rounds_or_on_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = |extra: &[&str]| -> (String, u64, String) {
        let out = sweep(dir.path(), &[&["--backends", "epoll,uring", "--min-rounds", "6"][..], extra].concat());
        assert!(out.status.success(), "{}", text(&out));
        let log = json(&dir.path().join("raw/c12_s64.slices.json"));
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        (log["stopped"].as_str().unwrap().to_string(), log["rounds"].as_u64().unwrap(), md)
    };
    // ±50 %: reached once there are blocks enough for an interval over blocks — two
    // rotations (two blocks started in each order) of eight rounds.
    let (why, rounds, md) = stopped(&["--precision", "0.5"]);
    assert_eq!(why, "precision reached");
    assert!(
        rounds >= 48 && rounds % 16 == 0,
        "{rounds} rounds: the first stage's three rotations of two blocks of eight"
    );
    let first_stage = || json(&dir.path().join("raw/c12_s64.slices.json"))["first_stage_blocks"].as_u64();
    assert_eq!(first_stage(), Some(6), "a default budget pays for the first stage's fewest rotations");
    assert!(md.contains(&format!("| {} × 8 |", rounds / 8)), "{md}");
    assert!(md.contains("| blocks |"), "the interval is over blocks: {md}");
    // A budget that pays for more makes the first stage longer — here up to half of
    // --max-rounds: four rotations of two blocks of three.
    let (why, rounds, _) =
        stopped(&["--precision", "0.5", "--budget-s", "60", "--block-rounds", "3", "--max-rounds", "48"]);
    assert_eq!(first_stage(), Some(8));
    assert!(why == "max rounds" || (why == "precision reached" && rounds >= 24), "{why} after {rounds} rounds");
    // A rotation (two blocks) never passes --max-rounds: blocks of four.
    let (why, rounds, md) = stopped(&["--precision", "0.0001", "--max-rounds", "8"]);
    assert_eq!((why.as_str(), rounds), ("max rounds", 8));
    assert!(md.contains("Stopped before reaching the precision asked for: 12 connections (max rounds)"), "{md}");
    assert!(md.contains("| 2 × 4 |") && md.contains("| pairs |"), "two blocks: an interval over pairs only: {md}");
    let (why, _, md) = stopped(&["--precision", "0.0001", "--budget-s", "1"]);
    assert_eq!(why, "budget");
    assert!(md.contains("(budget)"), "{md}");
}

/// A server that burns CPU while it is not loaded would take it from the one being
/// measured: it is found before the first round and stopped outside its own slices, and
/// says so; the other servers' slices then see it still.
#[test]
fn a_server_that_burns_cpu_while_idle_is_set_apart() {
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["--backends", "epoll", "--target", &helper("spin"), "--repeats", "4"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("spin is stopped outside its slices"), "{}", text(&out));
    let log = json(&dir.path().join("raw/c12_s64.slices.json"));
    let isolated = log["isolated"].as_array().unwrap();
    assert!(!isolated.is_empty() && isolated.iter().all(|i| i["server"] == "spin"), "{log}");
    assert!(isolated[0]["why"].as_str().unwrap().contains("while no server was loaded"));
    for s in log["slices"].as_array().unwrap().iter().filter(|s| s["server"] == "epoll") {
        let spin_cpu = s["others_cpu_s"][0][1].as_f64().unwrap();
        assert!(spin_cpu < 0.005, "the stopped spinner moved {spin_cpu} s during an epoll slice");
        assert_eq!(s["disturbed_by"].as_array().unwrap().len(), 0);
    }
    let rows = overall(dir.path());
    assert!(rows.iter().all(|r| r["status"] == "Success"), "{rows:?}");
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("Servers set apart") && md.contains("spin from round 0"), "{md}");
}

/// A backend made slower on purpose (50 µs of CPU burnt per read) is found slower.
#[test]
fn a_server_made_slower_on_purpose_is_found_slower() {
    let dir = tempfile::tempdir().unwrap();
    let slow = format!(
        "slow={} server --backend epoll --workers 1 --bind 127.0.0.1:{{port}} --spin-ns-per-read 50000",
        env!("CARGO_BIN_EXE_ringbench")
    );
    let out = sweep(dir.path(), &["--backends", "epoll", "--target", &slow, "--repeats", "8"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = overall(dir.path());
    let slow = rows.iter().find(|r| r["backend"] == "slow").unwrap();
    let lo: f64 = slow["server_cpu_us_per_request_ratio_ci95_lo"].parse().unwrap();
    assert!(lo > 1.5, "50 µs a request more is seen: {slow:?}");
    let hi: f64 = slow["throughput_rps_ratio_ci95_hi"].parse().unwrap();
    assert!(hi < 1.0, "and fewer requests a second: {slow:?}");
}

/// Open-loop rates in paired slices: each slice is a window at the offered rate.
#[test]
fn open_loop_rates_run_in_paired_slices() {
    let dir = tempfile::tempdir().unwrap();
    let out = ringbench()
        .args(["matrix", "--no-probe", "--engine", "epoll", "--connections", "12", "--slice-s", "0.3"])
        .args(["--backends", "epoll,uring", "--rates", "2000", "--repeats", "2", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for r in overall(dir.path()) {
        let sent: f64 = r["achieved_rate_rps"].parse().unwrap();
        assert!((sent - 2000.0).abs() < 100.0, "{r:?}");
        assert_eq!(r["rate_status"], "held");
    }
}

/// `--fresh-servers` is the seed's way: a fresh server per run, repeats, the t-interval.
#[test]
fn fresh_servers_keep_the_seeds_runs_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = ringbench()
        .args(["matrix", "--no-probe", "--connections", "5", "--requests", "10", "--repeats", "2", "--min-run-s", "0"])
        .args(["--fresh-servers", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[1/4 runs, about") && err.contains("[4/4 runs, done]"), "{err}");
    let raw = dir.path().join("raw");
    for f in ["epoll_c5_s64_r1.server.json", "uring_c5_s64_r2.server.csv", "epoll_c5_s64_r2.spectrum.service.hgrm"] {
        assert!(raw.join(f).exists(), "{f}");
    }
    assert!(!raw.join("c5_s64.slices.json").exists());
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("Student t-interval") && !md.contains("## How sure: paired slices"), "{md}");
}

/// Flags that make no sense together are refused in one line, exit 2.
#[test]
fn paired_flags_are_checked() {
    for (args, says) in [
        (&["--precision", "0"][..], "--precision"),
        (&["--precision", "0.02", "--fresh-servers"][..], "--precision goes with paired slices"),
        (&["--min-rounds", "9", "--max-rounds", "8"][..], "--max-rounds 8 is below --min-rounds 9"),
        (&["--slice-s", "0"][..], "--slice-s"),
        (&["--block-rounds", "0"][..], "--block-rounds"),
        (&["--block-rounds", "4", "--fresh-servers"][..], "--block-rounds goes with paired slices"),
    ] {
        let out = ringbench().arg("matrix").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.lines().count() == 1, "{args:?}: {err}");
    }
}
