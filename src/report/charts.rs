//! PNG grouped bar charts drawn with plotters: x = connections, one bar per backend, a
//! whisker from the min to the max over repeats.
//!
//! Text is drawn with a bundled font (DejaVu Sans, Bitstream Vera license, see
//! `DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so charts render on a
//! machine with no fonts and no fontconfig. plotters has no grouped-bar series, so each bar
//! is a rectangle offset inside its connections category.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::export::sizes;
use super::{Point, Spread};

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
/// Chart size in pixels.
pub const WIDTH_PX: u32 = 1280;
pub const HEIGHT_PX: u32 = 720;

/// A figure the report charts.
pub struct Metric {
    /// File name without extension.
    pub file: &'static str,
    pub title: &'static str,
    pub y_label: &'static str,
    /// How a sentence names it ("CPU per request").
    pub what: &'static str,
    pub better: &'static str,
    pub get: fn(&Point) -> Spread,
}

pub const METRICS: &[Metric] = &[
    Metric {
        file: "avg_total_duration",
        title: "AvgTotalDuration: time for each connection's requests",
        y_label: "seconds (mean over connections)",
        what: "average total duration",
        better: "lower is better",
        get: |p| p.avg_total_duration_s,
    },
    Metric {
        file: "avg_response_time",
        title: "AvgResponseTime: mean round trip per request",
        y_label: "seconds (closed-loop)",
        what: "average response time",
        better: "lower is better",
        get: |p| p.avg_response_time_s,
    },
    Metric {
        file: "throughput",
        title: "Throughput",
        y_label: "verified requests per second",
        what: "throughput",
        better: "higher is better",
        get: |p| p.throughput_rps,
    },
    Metric {
        file: "p99_latency",
        title: "p99 round-trip latency",
        y_label: "microseconds (closed-loop)",
        what: "p99 latency",
        better: "lower is better",
        get: |p| p.p99_response_us,
    },
    Metric {
        file: "cpu_per_request",
        title: "Server CPU per request",
        y_label: "µs of CPU (user + sys) per request",
        what: "CPU per request",
        better: "lower is better",
        get: |p| p.server_cpu_us_per_request,
    },
    Metric {
        file: "syscalls_per_request",
        title: "Server syscalls per request",
        y_label: "syscalls per request (server's own count)",
        what: "syscalls per request",
        better: "lower is better",
        get: |p| p.server_syscalls_per_request,
    },
];

/// A chart that was drawn.
pub struct Chart {
    pub metric: &'static Metric,
    /// File name inside `plots/`.
    pub file: String,
    pub size_bytes: usize,
}

/// Registers the bundled font as plotters' sans-serif (every style), once. plotters is
/// built with `ab_glyph`, which knows only registered fonts, so anything drawing text
/// through plotters in this build must call this first; criterion's own charts included
/// (see `bench/`).
pub fn register_bundled_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for style in [FontStyle::Normal, FontStyle::Bold, FontStyle::Italic, FontStyle::Oblique] {
            plotters::style::register_font(FAMILY, style, FONT).map_err(|_| "bundled font is invalid".to_string())?;
        }
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws every metric (per message size when several were swept) into `dir`.
pub fn draw_all(dir: &Path, points: &[Point], order: &[String], caption: &str) -> anyhow::Result<Vec<Chart>> {
    register_bundled_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let sizes = sizes(points);
    let mut out = Vec::new();
    for &size in &sizes {
        let pts: Vec<&Point> = points.iter().filter(|p| p.size_bytes == size).collect();
        for m in METRICS {
            let file = if sizes.len() > 1 { format!("{}_s{size}.png", m.file) } else { format!("{}.png", m.file) };
            let cap = format!("{caption} · {size}-byte requests");
            draw(&dir.join(&file), m, &pts, order, &cap).with_context(|| format!("drawing {file}"))?;
            out.push(Chart { metric: m, file, size_bytes: size });
        }
    }
    Ok(out)
}

fn color(i: usize, name: &str) -> RGBColor {
    match name {
        "epoll" => RGBColor(52, 101, 164),
        "uring" => RGBColor(230, 120, 20),
        _ => {
            let c = Palette99::pick(i + 2).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

fn draw(path: &Path, m: &Metric, points: &[&Point], order: &[String], caption: &str) -> anyhow::Result<()> {
    let mut conns: Vec<usize> = points.iter().map(|p| p.connections).collect();
    conns.sort_unstable();
    conns.dedup();
    let backends: Vec<&String> = order.iter().filter(|b| points.iter().any(|p| &&p.backend == b)).collect();
    let top = points.iter().map(|p| (m.get)(p).max).fold(0.0f64, f64::max);
    let y_max = if top > 0.0 { top * 1.18 } else { 1.0 };
    let n = conns.len().max(1);

    let root = BitMapBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE)?;
    let (main, foot) = root.split_vertically(HEIGHT_PX - 34);
    let mut chart = ChartBuilder::on(&main)
        .caption(m.title, (FAMILY, 28))
        .margin(18)
        .x_label_area_size(56)
        .y_label_area_size(96)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            conns.get(i as usize).map(|c| c.to_string()).unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .x_desc("concurrent connections")
        .y_desc(m.y_label)
        .label_style((FAMILY, 17))
        .axis_desc_style((FAMILY, 19))
        .draw()?;

    let group_w = 0.8;
    let bar_w = group_w / backends.len().max(1) as f64;
    let show_values = conns.len() * backends.len() <= 24;
    for (j, b) in backends.iter().enumerate() {
        let c = color(j, b);
        let mine: Vec<(usize, &Point)> = points
            .iter()
            .filter(|p| &&p.backend == b)
            .filter_map(|p| conns.iter().position(|&x| x == p.connections).map(|i| (i, *p)))
            .collect();
        let left = |i: usize| i as f64 - group_w / 2.0 + j as f64 * bar_w;
        chart
            .draw_series(mine.iter().map(|&(i, p)| {
                let v = (m.get)(p).mean;
                Rectangle::new([(left(i) + bar_w * 0.06, 0.0), (left(i) + bar_w * 0.94, v)], c.filled())
            }))?
            .label(b.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 18, y + 7)], c.filled()));
        // Whiskers: min to max over repeats, with caps.
        for &(i, p) in &mine {
            let s = (m.get)(p);
            let mid = left(i) + bar_w / 2.0;
            let cap = bar_w * 0.18;
            let ink = BLACK.stroke_width(2);
            chart.draw_series([
                PathElement::new(vec![(mid, s.min), (mid, s.max)], ink),
                PathElement::new(vec![(mid - cap, s.min), (mid + cap, s.min)], ink),
                PathElement::new(vec![(mid - cap, s.max), (mid + cap, s.max)], ink),
            ])?;
            let text = if !p.ok {
                Some(("Fail".to_string(), RED))
            } else if show_values {
                Some((format_value(s.mean), BLACK))
            } else {
                None
            };
            if let Some((t, col)) = text {
                chart.draw_series([Text::new(
                    t,
                    (left(i) + bar_w * 0.1, s.max.max(s.mean) + y_max * 0.035),
                    (FAMILY, 14).into_font().color(&col),
                )])?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    foot.draw(&Text::new(caption.to_string(), (18, 6), (FAMILY, 16).into_font().color(&RGBColor(70, 70, 70))))?;
    root.present().with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok(())
}

/// A short label for a bar: three significant figures.
fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else if v.abs() >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}
