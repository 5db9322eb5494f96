//! The report: a small hand-made raw directory must give the expected overall.csv, a
//! summary, and charts that decode as PNG of the right size; `ringbench report DIR` must
//! redraw deleted charts; client files from two hosts merge into one point.

mod common;

use std::path::Path;
use std::process::Command;

use ringbench::report::metrics::{metric, METRICS};
use ringbench::report::{self, charts};
use ringbench::results::{encode_histogram, ClientSummary, Percentiles, ThreadRow};

fn row(thread: usize, label: &str, requests: u64, total_s: f64, avg_s: f64, errors: u64) -> ThreadRow {
    ThreadRow {
        thread,
        label: label.into(),
        requests,
        bytes: requests * 64,
        total_duration_s: total_s,
        avg_response_s: avg_s,
        p50_response_s: avg_s,
        p99_response_s: avg_s * 2.0,
        max_response_s: avg_s * 3.0,
        errors,
        error: if errors > 0 { "request 3: read: timed out after 10.0 s".into() } else { String::new() },
        rounds: 1,
    }
}

/// Writes one client host's files for a run; latencies are recorded into its histogram.
fn write_client(raw: &Path, stem: &str, label: &str, rows: &[ThreadRow], throughput_rps: f64, latencies_ns: &[u64]) {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for &l in latencies_ns {
        h.record(l).unwrap();
    }
    ringbench::results::write_rows_csv(&raw.join(format!("{stem}.client-{label}.csv")), rows).unwrap();
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    let s = ClientSummary {
        label: label.into(),
        server: "127.0.0.1:1".into(),
        connections: rows.len(),
        connections_ok: rows.len(),
        connections_failed: 0,
        requests_per_connection: 10,
        min_run_s: 0.0,
        requests_expected: rows.len() as u64 * 10,
        size_bytes: 64,
        requests,
        bytes: requests * 64,
        errors: rows.iter().map(|r| r.errors).sum(),
        wall_s: 1.0,
        throughput_rps,
        latency_mean_us: 0.0,
        latency_p50_us: 0.0,
        latency_p90_us: 0.0,
        latency_p99_us: 0.0,
        latency_p999_us: 0.0,
        latency_max_us: 0.0,
        avg_total_duration_s: 0.0,
        avg_response_time_s: 0.0,
        connect_mean_s: 0.0,
        connect_max_s: 0.0,
        latency_model: "closed-loop".into(),
        engine: "threads".into(),
        target_rate_rps: None,
        achieved_rate_rps: None,
        rate_status: None,
        warmup_s: 0.0,
        duration_s: 0.0,
        service: Percentiles::of(&h),
        corrected: Percentiles::of(&h),
        send_lateness: None,
        client_cpu_s: 0.0,
        latency_histogram: encode_histogram(&h),
        corrected_histogram: encode_histogram(&h),
        lateness_histogram: String::new(),
        measured_start_unix_us: 0,
        measured_end_unix_us: 0,
        first_error: None,
        workload: "rr".into(),
        connect_histogram: String::new(),
        connect: None,
        idle_connections: 0,
        idle_echoed: 0,
    };
    std::fs::write(raw.join(format!("{stem}.client-{label}.json")), serde_json::to_string(&s).unwrap()).unwrap();
}

fn write_server(raw: &Path, stem: &str, backend: &str, connections: u64, cpu_s: f64, syscalls: u64, log_rows: usize) {
    let summary = serde_json::json!({
        "backend": backend, "bind": "127.0.0.1:1", "workers": 1, "connections": connections, "rejected": 0,
        "log_rows": log_rows, "bytes": 0, "reads": 0, "wall_s": 1.0, "cpu_user_s": 0.0, "cpu_sys_s": cpu_s,
        "voluntary_ctx_switches": 0, "involuntary_ctx_switches": 0, "syscalls": {"read": syscalls},
        "syscalls_total": syscalls, "accept_fd_exhausted": 0, "features": {}, "sqes_submitted": 0,
        "cqes_reaped": 0, "bufring_empty": 0, "cq_overflow": 0, "nofile_soft": 1024, "nofile_hard": 1024
    });
    std::fs::write(raw.join(format!("{stem}.server.json")), summary.to_string()).unwrap();
    let mut log = String::from("peer,fd,worker,bytes,reads,opened_unix_s,closed_unix_s,close_reason\n");
    for i in 0..log_rows {
        log += &format!("127.0.0.1:{},{},0,640,10,1.0,2.0,eof\n", 40000 + i, 10 + i);
    }
    std::fs::write(raw.join(format!("{stem}.server.csv")), log).unwrap();
}

/// Two backends at 2 connections × 10 requests, two repeats each; uring's second repeat
/// lost a request (so the point fails), and the server log of epoll's repeat 2 is complete.
fn hand_made_sweep(dir: &Path) {
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    // (run, rows, throughput, latencies, server CPU s, server syscalls)
    type Run = (&'static str, [ThreadRow; 2], f64, Vec<u64>, f64, u64);
    let runs: [Run; 4] = [
        // epoll r1: durations 1 and 3 s, responses 0.1 and 0.3 s; 20 requests; 1000 req/s.
        (
            "epoll_c2_s64_r1",
            [row(0, "a", 10, 1.0, 0.1, 0), row(1, "a", 10, 3.0, 0.3, 0)],
            1000.0,
            vec![100_000; 20],
            0.002,
            42,
        ),
        // epoll r2: durations 2 and 2 s, responses 0.2 s; 2000 req/s.
        (
            "epoll_c2_s64_r2",
            [row(0, "a", 10, 2.0, 0.2, 0), row(1, "a", 10, 2.0, 0.2, 0)],
            2000.0,
            vec![300_000; 20],
            0.004,
            40,
        ),
        (
            "uring_c2_s64_r1",
            [row(0, "a", 10, 1.0, 0.1, 0), row(1, "a", 10, 1.0, 0.1, 0)],
            4000.0,
            vec![50_000; 20],
            0.001,
            2,
        ),
        // uring r2 lost a request.
        (
            "uring_c2_s64_r2",
            [row(0, "a", 10, 1.0, 0.1, 0), row(1, "a", 9, 1.0, 0.1, 1)],
            3000.0,
            vec![50_000; 19],
            0.001,
            2,
        ),
    ];
    for (stem, rows, rps, lat, cpu_s, syscalls) in runs {
        write_client(&raw, stem, "a", &rows, rps, &lat);
        write_server(&raw, stem, stem.split('_').next().unwrap(), 2, cpu_s, syscalls, 2);
    }
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("'{s}' is not a number"))
}

fn read_overall(dir: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(dir.join("overall.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    assert_eq!(
        headers.iter().take(16).collect::<Vec<_>>().join(","),
        "backend,connections,status,requests_per_connection,data_per_connection_bytes,total_requests,\
         total_data_bytes,avg_total_duration_s,avg_response_time_s,throughput_rps,p50_response_us,p99_response_us,\
         server_cpu_us_per_request,server_syscalls_per_request,errors,repeats"
    );
    r.records().map(|x| x.unwrap()).collect()
}

/// Width and height from a PNG, after decoding every pixel.
fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

#[test]
fn hand_made_raw_dir_gives_the_expected_overall_csv() {
    let dir = tempfile::tempdir().unwrap();
    hand_made_sweep(dir.path());
    let points = report::build(dir.path(), &report::Options::default()).unwrap().points;
    assert_eq!(points.len(), 2);
    let rows = read_overall(dir.path());
    assert_eq!(rows.len(), 2);
    let epoll = &rows[0];
    assert_eq!(&epoll[0], "epoll", "epoll is the baseline and comes first");
    assert_eq!(&epoll[1], "2");
    assert_eq!(&epoll[2], "Success");
    assert_eq!((&epoll[3], &epoll[4], &epoll[5], &epoll[6]), ("10", "640", "20", "1280"));
    assert_eq!(num(&epoll[7]), 2.0, "AvgTotalDuration: mean of 2 s and 2 s");
    assert_eq!(num(&epoll[8]), 0.2, "AvgResponseTime: mean of 0.2 and 0.2");
    assert_eq!(num(&epoll[9]), 1500.0, "throughput: mean of 1000 and 2000");
    assert!((num(&epoll[10]) - 200.0).abs() < 0.5, "p50: mean of 100 us and 300 us: {}", &epoll[10]);
    // CPU: (2 ms and 4 ms) / 20 requests = 100 and 200 us -> 150; syscalls 42/20, 40/20.
    assert_eq!(num(&epoll[12]), 150.0);
    assert_eq!(num(&epoll[13]), 2.05);
    assert_eq!((&epoll[14], &epoll[15]), ("0", "2"));
    let uring = &rows[1];
    assert_eq!(&uring[0], "uring");
    assert_eq!(&uring[2], "Fail", "a lost request fails the point");
    assert_eq!(&uring[14], "1");
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("| epoll | 2 | 64 | Success |"), "{md}");
    assert!(md.contains("uring at 2 connections: 1 client errors (first: request 3: read: timed out after 10.0 s); 19 of 20 requests verified"), "{md}");
    assert!(md.contains("![Server CPU per request](plots/cpu_per_request.png)"), "{md}");
}

#[test]
fn charts_decode_as_png_of_the_right_size_and_come_back_after_deletion() {
    let dir = tempfile::tempdir().unwrap();
    hand_made_sweep(dir.path());
    report::build(dir.path(), &report::Options::default()).unwrap();
    let plots = dir.path().join("plots");
    // A closed-loop rr sweep has no latency from an intended send, no stream MiB and no
    // crr connects: those charts are not drawn.
    let drawn = |m: &&ringbench::report::metrics::Metric| {
        !m.key.starts_with("corrected_") && !m.key.starts_with("connect_") && !m.key.contains("mib")
    };
    let charted: Vec<_> = METRICS.iter().filter(drawn).filter_map(|m| m.chart.as_ref()).collect();
    assert!(!plots.join("corrected_p99_latency.png").exists(), "a chart of nothing");
    for c in &charted {
        assert_eq!(png_size(&plots.join(format!("{}.png", c.file))), (charts::WIDTH_PX, charts::HEIGHT_PX));
    }
    for name in ["avg_total_duration.png", "avg_response_time.png"] {
        assert!(plots.join(name).exists(), "the seed's two charts: {name}");
    }
    let ratios = METRICS.iter().filter(drawn).filter(|m| m.ratio_chart).count();
    for c in METRICS.iter().filter(drawn).filter(|m| m.ratio_chart).filter_map(|m| m.chart.as_ref()) {
        assert_eq!(png_size(&plots.join(format!("ratio_{}.png", c.file))), (charts::WIDTH_PX, charts::HEIGHT_PX));
    }
    std::fs::remove_dir_all(&plots).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("report").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<String> =
        std::fs::read_dir(&plots).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let pngs: Vec<&String> = files.iter().filter(|f| f.ends_with(".png")).collect();
    // ... and one latency spectrum per connection count (2 here).
    assert_eq!(png_size(&plots.join("spectrum_c2.png")), (charts::WIDTH_PX, charts::HEIGHT_PX));
    assert_eq!(pngs.len(), charted.len() + ratios + 1, "{files:?}");
    for png in pngs {
        let svg = png.replace(".png", ".svg");
        let text = std::fs::read_to_string(plots.join(&svg)).unwrap_or_else(|_| panic!("no {svg} beside {png}"));
        assert!(
            text.starts_with("<svg") && text.contains("DejaVu Sans") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
    }
    assert!(files.contains(&"DejaVuSans.ttf".to_string()), "the SVGs' font is beside them");
    assert_eq!(png_size(&plots.join("throughput.png")), (charts::WIDTH_PX, charts::HEIGHT_PX));
}

#[test]
fn client_files_from_two_hosts_merge_into_one_point() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    // Host a: 1 connection, 1 s, 100 us round trips; host b: 1 connection, 3 s, 300 us.
    write_client(&raw, "epoll_c2_s64_r1", "a", &[row(0, "a", 10, 1.0, 0.0001, 0)], 10.0, &[100_000; 10]);
    write_client(&raw, "epoll_c2_s64_r1", "b", &[row(1, "b", 10, 3.0, 0.0003, 0)], 30.0, &[300_000; 10]);
    write_server(&raw, "epoll_c2_s64_r1", "epoll", 2, 0.002, 40, 2);
    let points = report::build(dir.path(), &report::Options::default()).unwrap().points;
    assert_eq!(points.len(), 1);
    let p = &points[0];
    assert!(p.ok, "{:?}", p.problems);
    let mean = |key: &str| p.get(metric(key).unwrap()).unwrap().mean;
    assert_eq!(mean("avg_total_duration_s"), 2.0, "mean over both hosts' threads");
    assert_eq!(mean("throughput_rps"), 40.0, "hosts' throughputs add");
    assert!((mean("p99_response_us") - 300.0).abs() < 1.0, "merged histogram p99: {}", mean("p99_response_us"));
    assert!((mean("p50_response_us") - 100.0).abs() < 1.0, "merged histogram p50: {}", mean("p50_response_us"));
}

#[test]
fn report_of_an_empty_directory_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("raw")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("report").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no runs"), "{err}");
}

/// The whole pipeline at toy size: both backends in paired slices, raw files, report.
#[test]
fn matrix_runs_both_backends_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(["matrix", "--connections", "3,8", "--requests", "5", "--repeats", "1", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = read_overall(dir.path());
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| &r[2] == "Success"), "{rows:?}");
    let backends: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(backends, ["epoll", "uring", "epoll", "uring"]);
    for f in ["env.json", "summary.md", "overall.json", "raw/uring_c8_s64_session1.server.json", "plots/throughput.png"]
    {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("env.json")).unwrap()).unwrap();
    assert!(env["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(env["settings"]["connections"].as_array().is_some_and(|c| c.len() == 2));
    // Enough to compare two machines: the mitigations, the build, and the probe's costs.
    assert!(env["vulnerabilities"].as_object().is_some_and(|v| !v.is_empty()), "{}", env["vulnerabilities"]);
    for k in ["mitigations", "hypervisor", "kernel_cmdline"] {
        assert!(env[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    assert!(env["build"]["commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(env["build"]["rustc"].as_str().is_some_and(|c| c.starts_with("rustc")), "{}", env["build"]);
    assert!(env["sysctls"]["net.core.somaxconn"].as_str().is_some_and(|c| !c.is_empty()));
    let costs = env["probe"]["costs"].as_array().expect("the probe ran before the sweep");
    let syscall = costs.iter().find(|c| c["name"] == "null_syscall").unwrap();
    assert!(syscall["median_ns"].as_f64().is_some_and(|ns| ns > 10.0 && ns < 100_000.0), "{syscall}");
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("null syscall") && md.contains("## Why"), "{md}");
}

/// The server's CPU is sampled between the client's start and end marks; with hundreds of
/// client threads released at once the marks must still bracket the whole measured phase
/// (a start mark written after the gate opened came almost at the end at 2000).
#[test]
fn cpu_is_sampled_over_the_whole_measured_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args([
            "matrix",
            "--connections",
            "2000",
            "--requests",
            "20",
            "--repeats",
            "1",
            "--backends",
            "epoll",
            "--no-probe",
            // The client's own marks bracket a fresh server's run.
            "--fresh-servers",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("raw").join(f)).unwrap()).unwrap()
    };
    let proc = read("epoll_c2000_s64_r1.server-proc.json");
    let client = read("epoll_c2000_s64_r1.client-vm.json");
    let (measured, wall) = (proc["measured_s"].as_f64().unwrap(), client["wall_s"].as_f64().unwrap());
    assert!((measured - wall).abs() <= 0.05 * wall + 0.005, "sampled over {measured} s of a {wall} s phase");
    let window_s = (client["measured_end_unix_us"].as_u64().unwrap()
        - client["measured_start_unix_us"].as_u64().unwrap()) as f64
        / 1e6;
    assert!((window_s - wall).abs() <= 0.05 * wall + 0.005, "window {window_s} s, wall {wall} s");
    assert!(proc["cpu_s"].as_f64().unwrap() > 0.0);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A sweep on a disk that fills up: one line names the file it could not write, the exit
/// status says so, and every file it did write is whole.
#[test]
fn a_sweep_whose_disk_fills_up_names_the_file_and_leaves_nothing_half_written() {
    let Some(fs) = common::TinyFs::mount(48) else { return };
    let out_dir = fs.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args([
            "matrix",
            "--connections",
            "3",
            "--requests",
            "2",
            "--repeats",
            "1",
            "--backends",
            "epoll",
            "--no-probe",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let named = format!("cannot write '{}", out_dir.display());
    assert!(err.lines().any(|l| l.contains(&named) && l.contains("No space left")), "{err}");
    let written = files_under(&out_dir);
    assert!(!written.is_empty());
    for f in written {
        match f.extension().and_then(|e| e.to_str()) {
            Some("csv") => {
                let mut r = csv::Reader::from_path(&f).unwrap();
                assert!(r.records().all(|x| x.is_ok()), "{} is cut short", f.display());
            }
            Some("json") => {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{} is cut short", f.display());
            }
            Some("png") => {
                png_size(&f);
            }
            _ => {}
        }
    }
}

/// The reference run in `plots/` is rebuilt from its committed raw files and env.json
/// alone: the same overall.csv, overall.json and summary.md, and the same charts, byte for
/// byte. A change to aggregation, statistics or drawing that moves the published answer
/// fails here; regenerate with `ringbench report plots` and say why in the commit.
#[test]
fn the_committed_reference_run_rebuilds_byte_for_byte_from_its_raw_files() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("plots");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("raw")).unwrap();
    for e in std::fs::read_dir(reference.join("raw")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("raw").join(e.file_name())).unwrap();
    }
    std::fs::copy(reference.join("env.json"), dir.path().join("env.json")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench")).arg("report").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut compared = 0;
    for name in ["overall.csv", "overall.json", "summary.md"] {
        let want = std::fs::read(reference.join(name)).unwrap();
        assert!(std::fs::read(dir.path().join(name)).unwrap() == want, "{name} differs from the committed one");
        compared += 1;
    }
    for e in std::fs::read_dir(reference.join("plots")).unwrap() {
        let name = e.unwrap().file_name();
        let got = std::fs::read(dir.path().join("plots").join(&name))
            .unwrap_or_else(|e| panic!("{} was not drawn: {e}", name.to_string_lossy()));
        assert!(got == std::fs::read(reference.join("plots").join(&name)).unwrap(), "{name:?} differs");
        compared += 1;
    }
    let drawn = std::fs::read_dir(dir.path().join("plots")).unwrap().count();
    assert_eq!(drawn + 3, compared, "charts drawn that the reference does not have");
}
