//! Grouped bar charts: x = connections (and offered rate), one bar per server, a whisker
//! from the min to the max over repeats; and ratio charts, one bar per server against the
//! baseline, with its 95 % interval. plotters has no grouped-bar series, so each bar is a
//! rectangle offset in its category.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{at, color, compact, frame, place_label, places, x_desc, Figure, Key, FAMILY, WIDTH_PX};
use crate::report::metrics::Metric;
use crate::report::points::Point;
use crate::report::points::{failed_pair, ratio};
use crate::report::stats::Pairing;
use crate::workload::Workload;

/// One bar: its value and whisker, or why there is none.
pub(super) enum Bar {
    Value { value: f64, lo: f64, hi: f64 },
    Missing(&'static str),
}

/// A chart's data, in the units it shows.
pub(super) struct Bars {
    pub(super) title: String,
    subtitle: String,
    axis: String,
    caption: String,
    x_labels: Vec<String>,
    /// What the x axis shows.
    x_desc: &'static str,
    /// Series name and one bar per x.
    series: Vec<(String, Vec<Bar>)>,
    /// A horizontal line (1.0 on a ratio chart).
    reference: Option<f64>,
    /// The colour of the first series: a server keeps its colour on every chart.
    first_color: usize,
    /// How a bar's value is labelled.
    label: fn(f64) -> String,
}

pub(super) fn metric_bars(m: &Metric, points: &[&Point], order: &[String], caption: &str) -> (Bars, String) {
    let xs = places(points);
    let spec = m.chart.as_ref();
    let scale = spec.map_or(1.0, |c| c.scale);
    let repeats = points.iter().map(|p| p.repeats).max().unwrap_or(0);
    let series = order
        .iter()
        .filter(|b| points.iter().any(|p| &&p.backend == b))
        .map(|b| {
            let bars = xs
                .iter()
                .map(|x| match at(points, b, x) {
                    Some(p) if !p.ok => Bar::Missing("Fail"),
                    Some(p) => p.get(m).map_or(Bar::Missing("n/a"), |s| Bar::Value {
                        value: s.mean * scale,
                        lo: s.min * scale,
                        hi: s.max * scale,
                    }),
                    None => Bar::Missing(""),
                })
                .collect();
            (b.clone(), bars)
        })
        .collect();
    let whiskers = format!("whiskers: min–max of {repeats} repeat{}", if repeats == 1 { "" } else { "s" });
    let subtitle = format!("{whiskers} · {}", m.better.phrase());
    let note = format!("Bars are means, {whiskers}; {}.", m.better.phrase());
    let bars = Bars {
        title: m.title.into(),
        subtitle,
        axis: spec.map_or(String::new(), |c| c.axis.into()),
        caption: caption.into(),
        x_labels: xs.iter().map(place_label).collect(),
        x_desc: x_desc(&xs),
        series,
        reference: None,
        first_color: 0,
        label: compact,
    };
    (bars, note)
}

pub(super) fn ratio_bars(
    m: &Metric,
    all: &[Point],
    points: &[&Point],
    order: &[String],
    caption: &str,
) -> Option<(Bars, String)> {
    let base = order.first()?;
    let xs = places(points);
    let series: Vec<(String, Vec<Bar>)> = order
        .iter()
        .skip(1)
        .filter(|b| points.iter().any(|p| &&p.backend == b))
        .map(|b| {
            let bars = xs.iter().map(|x| ratio_bar(all, at(points, b, x), m, base)).collect();
            (b.clone(), bars)
        })
        .collect();
    if series.is_empty() {
        return None;
    }
    let title = format!("{} relative to {base}", m.title);
    let subtitle = format!("whiskers: 95 % confidence interval of the paired ratio · 1 = same as {base}");
    let how = if points.iter().all(|p| p.pairing == Pairing::Slices) {
        "the median of paired slices"
    } else {
        "the geometric mean of paired repeats"
    };
    let note = format!(
        "Each bar is the server's {} divided by {base}'s ({how}); whiskers are its 95 % confidence \
         interval; a whisker that crosses the line at 1 means no significant difference; {}.",
        m.what,
        m.better.phrase()
    );
    let axis = format!("× {base}");
    Some((
        Bars {
            title,
            subtitle,
            axis,
            caption: caption.into(),
            x_labels: xs.iter().map(place_label).collect(),
            x_desc: x_desc(&xs),
            series,
            reference: Some(1.0),
            first_color: 1,
            label: |r| format!("{r:.2}"),
        },
        note,
    ))
}

/// One bar of a ratio chart: `p`'s ratio to the baseline with its interval, `Fail` where
/// it (or the baseline) failed, `n/a` where there is no such point or figure.
fn ratio_bar(all: &[Point], p: Option<&Point>, m: &Metric, base: &str) -> Bar {
    match p.and_then(|p| ratio(all, p, m, base)) {
        Some(r) => {
            let (lo, hi) = r.ci95.unwrap_or((r.ratio, r.ratio));
            Bar::Value { value: r.ratio, lo, hi }
        }
        None if p.is_some_and(|p| failed_pair(all, p, base).is_some()) => Bar::Missing("Fail"),
        None => Bar::Missing("n/a"),
    }
}

/// When several workloads ran: at each connection count (and size) of a closed loop, each
/// server's CPU per request and req/s ÷ the baseline's across the workloads — where the
/// answer changes. Returns each chart's file, bars, note and size.
pub(super) fn across_workloads(all: &[Point], order: &[String], caption: &str) -> Vec<(String, Bars, String, usize)> {
    let Some(base) = order.first() else { return Vec::new() };
    let mut workloads: Vec<Workload> = all.iter().map(|p| p.workload).collect();
    workloads.sort_unstable();
    workloads.dedup();
    let mut places: Vec<(usize, usize)> =
        all.iter().filter(|p| p.rate.is_none()).map(|p| (p.size_bytes, p.connections)).collect();
    places.sort_unstable();
    places.dedup();
    let sizes = places.iter().map(|p| p.0).collect::<std::collections::BTreeSet<_>>().len();
    if workloads.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for &(size, conns) in &places {
        for m in
            ["server_cpu_us_per_request", "throughput_rps"].iter().filter_map(|k| crate::report::metrics::metric(k))
        {
            let find = |b: &str, w: Workload| {
                all.iter().find(|p| {
                    p.backend == b
                        && p.workload == w
                        && p.connections == conns
                        && p.size_bytes == size
                        && p.rate.is_none()
                })
            };
            let series: Vec<(String, Vec<Bar>)> = order
                .iter()
                .skip(1)
                .filter(|b| workloads.iter().any(|w| find(b, *w).is_some()))
                .map(|b| {
                    let bars = workloads.iter().map(|w| ratio_bar(all, find(b, *w), m, base)).collect();
                    (b.clone(), bars)
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            let file_of = m.chart.as_ref().map_or(m.key, |c| c.file);
            let size_part = if sizes > 1 { format!("_s{size}") } else { String::new() };
            let file = format!("ratio_workloads_{file_of}_c{conns}{size_part}.png");
            let title = format!("{} relative to {base}, by workload, at {conns} connections", m.title);
            let note = format!(
                "Each bar is the server's {} divided by {base}'s at {conns} connections in each workload, with \
                 its 95 % interval; a whisker that crosses the line at 1 means no significant difference; {}.",
                m.what,
                m.better.phrase()
            );
            let bars = Bars {
                title,
                subtitle: format!("whiskers: 95 % confidence interval of the paired ratio · 1 = same as {base}"),
                axis: format!("× {base}"),
                caption: format!("{caption} · {size}-byte requests"),
                x_labels: workloads.iter().map(Workload::name).collect(),
                x_desc: "workload",
                series,
                reference: Some(1.0),
                first_color: 1,
                label: |r| format!("{r:.2}"),
            };
            out.push((file, bars, note, size));
        }
    }
    out
}

/// Value labels turn upright below this bar width, so neighbours never overlap.
const UPRIGHT_BELOW_PX: f64 = 48.0;

impl Figure for Bars {
    fn paint<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        paint(root, self)
    }
}

fn paint<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, bars: &Bars) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let legend: Vec<Key> =
        bars.series.iter().enumerate().map(|(j, (name, _))| Key::boxed(name, color(bars.first_color + j))).collect();
    let body = frame(&root, &bars.title, &bars.subtitle, &legend, &bars.caption)?;
    let n = bars.x_labels.len().max(1);
    let k = bars.series.len().max(1);
    let group_w = 0.8;
    let bar_w = group_w / k as f64;
    let bar_px = (WIDTH_PX as f64 - 140.0) / n as f64 * bar_w;
    let upright = bar_px < UPRIGHT_BELOW_PX;
    let show_values = bar_px >= 14.0;
    let top = bars
        .series
        .iter()
        .flat_map(|(_, b)| b.iter())
        .filter_map(|b| match b {
            Bar::Value { hi, .. } => Some(*hi),
            Bar::Missing(_) => None,
        })
        .chain(bars.reference)
        .fold(0.0f64, f64::max);
    let headroom = if upright { 1.32 } else { 1.16 };
    let y_max = if top > 0.0 { top * headroom } else { 1.0 };
    let mut chart = ChartBuilder::on(&body)
        .margin(18)
        .x_label_area_size(56)
        .y_label_area_size(96)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)
        .map_err(err)?;
    let x_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            bars.x_labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let y_label = |y: &f64| compact(*y);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc(bars.x_desc)
        .y_desc(bars.axis.as_str())
        .label_style((FAMILY, 17))
        .axis_desc_style((FAMILY, 19))
        .draw()
        .map_err(err)?;
    if let Some(r) = bars.reference {
        chart
            .draw_series([PathElement::new(vec![(-0.5, r), (n as f64 - 0.5, r)], BLACK.stroke_width(1))])
            .map_err(err)?;
    }
    for (j, (name, series)) in bars.series.iter().enumerate() {
        let c = color(bars.first_color + j);
        let left = |i: usize| i as f64 - group_w / 2.0 + j as f64 * bar_w;
        chart
            .draw_series(series.iter().enumerate().filter_map(|(i, b)| match b {
                Bar::Value { value, .. } => {
                    Some(Rectangle::new([(left(i) + bar_w * 0.06, 0.0), (left(i) + bar_w * 0.94, *value)], c.filled()))
                }
                Bar::Missing(_) => None,
            }))
            .map_err(err)?;
        let _ = name;
        for (i, b) in series.iter().enumerate() {
            let mid = left(i) + bar_w / 2.0;
            let (text, at, ink) = match b {
                Bar::Value { value, lo, hi } => {
                    let cap = bar_w * 0.18;
                    let stroke = BLACK.stroke_width(2);
                    chart
                        .draw_series([
                            PathElement::new(vec![(mid, *lo), (mid, *hi)], stroke),
                            PathElement::new(vec![(mid - cap, *lo), (mid + cap, *lo)], stroke),
                            PathElement::new(vec![(mid - cap, *hi), (mid + cap, *hi)], stroke),
                        ])
                        .map_err(err)?;
                    // Above the whisker's cap, so a label never sits on it.
                    (show_values.then(|| (bars.label)(*value)), hi.max(*value) + y_max * 0.015, BLACK)
                }
                Bar::Missing(why) => (Some(why.to_string()), y_max * 0.015, RGBColor(200, 0, 0)),
            };
            let Some(text) = text.filter(|t| !t.is_empty()) else { continue };
            let style = (FAMILY, 14).into_font().color(&ink);
            let style = if upright {
                style.transform(FontTransform::Rotate270).pos(Pos::new(HPos::Left, VPos::Center))
            } else {
                style.pos(Pos::new(HPos::Center, VPos::Bottom))
            };
            chart.draw_series([Text::new(text, (mid, at), style)]).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
