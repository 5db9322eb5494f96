//! Line charts of latency on a log axis:
//!
//! - the **knee**: p50, p99 and p99.9 latency from the intended send (coordinated omission
//!   corrected) against the offered rate, one colour per server, at each connection count
//!   of an open-loop sweep — where a server stops keeping up, its lines turn up;
//! - the **spectrum**: the whole latency distribution of each server on a "nines" axis
//!   (90 %, 99 %, 99.9 % … equally spaced), the layout of HdrHistogram's plots, at each
//!   connection count (and rate).

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{color, compact, frame, Figure, Key, Mark, FAMILY};
use crate::report::metrics::metric;
use crate::report::points::Point;

/// How a series' points are marked (the percentile, on a knee chart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Marker {
    Circle,
    Triangle,
    Cross,
    /// No marker: a dense line (a spectrum).
    None,
}

impl Marker {
    /// Draws the marker at `at` on `area` (any coordinates): filled, or hollow for a point
    /// that did not hold its rate.
    pub(super) fn draw_at<DB: DrawingBackend, CT: CoordTranslate>(
        self,
        area: &DrawingArea<DB, CT>,
        at: CT::From,
        c: RGBColor,
        filled: bool,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        CT::From: Clone,
    {
        let style = if filled { c.filled() } else { c.stroke_width(2) };
        match self {
            Marker::Circle => area.draw(&Circle::new(at, 5, style)),
            Marker::Triangle => area.draw(&TriangleMarker::new(at, 7, style)),
            Marker::Cross => area.draw(&Cross::new(at, 6, c.stroke_width(2))),
            Marker::None => Ok(()),
        }
    }
}

/// What the x axis is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum XAxis {
    /// Offered requests per second, up to this.
    Rate(f64),
    /// -log10(1 - percentile), up to this many nines.
    Nines(f64),
}

/// One line: its points (x, y in ms, whether drawn filled).
struct Line {
    color: RGBColor,
    marker: Marker,
    points: Vec<(f64, f64, bool)>,
}

/// A line chart's data, in the units it shows.
pub(super) struct Lines {
    pub(super) title: String,
    subtitle: String,
    caption: String,
    x: XAxis,
    y_desc: String,
    lines: Vec<Line>,
    legend: Vec<Key>,
}

/// The percentiles a knee chart draws: metric and marker.
const KNEE: [(&str, &str, Marker); 3] = [
    ("corrected_p50_us", "p50", Marker::Circle),
    ("corrected_p99_us", "p99", Marker::Triangle),
    ("corrected_p999_us", "p99.9", Marker::Cross),
];

/// Servers in `order` that have points here, with their colours (a server keeps its
/// colour on every chart).
fn servers<'a>(points: &[&Point], order: &'a [String]) -> Vec<(&'a String, RGBColor)> {
    order
        .iter()
        .enumerate()
        .filter(|(_, b)| points.iter().any(|p| &&p.backend == b))
        .map(|(i, b)| (b, color(i)))
        .collect()
}

fn ascending<T: Ord + Copy>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One knee chart per connection count of an open-loop sweep: (file stem, chart, note).
pub(super) fn knees(points: &[&Point], order: &[String], caption: &str) -> Vec<(String, Lines, String)> {
    let open: Vec<&Point> = points.iter().copied().filter(|p| p.rate.is_some()).collect();
    let mut out = Vec::new();
    for conns in ascending(open.iter().map(|p| p.connections)) {
        let here: Vec<&Point> = open.iter().copied().filter(|p| p.connections == conns && p.ok).collect();
        let servers = servers(&here, order);
        let mut lines = Vec::new();
        for &(b, c) in &servers {
            for (key, _, marker) in KNEE {
                let Some(m) = metric(key) else { continue };
                let mut pts: Vec<(f64, f64, bool)> = here
                    .iter()
                    .filter(|p| &p.backend == b)
                    .filter_map(|p| Some((p.rate? as f64, p.get(m)?.mean / 1e3, p.held())))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                if !pts.is_empty() {
                    lines.push(Line { color: c, marker, points: pts });
                }
            }
        }
        if lines.is_empty() {
            continue;
        }
        let max_rate = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).fold(0.0, f64::max);
        let mut legend: Vec<Key> = servers.iter().map(|(b, c)| Key::boxed(b, *c)).collect();
        let grey = RGBColor(90, 90, 90);
        legend.extend(KNEE.iter().map(|(_, name, m)| Key {
            name: name.to_string(),
            color: grey,
            mark: Mark::Line(*m),
        }));
        let failed = open.iter().filter(|p| p.connections == conns && !p.ok).count();
        let note = format!(
            "Latency from each request's intended send (coordinated omission corrected) against the rate \
             offered, at {conns} connections: where a server stops keeping up, its lines turn up. Each point \
             is the mean over repeats; a hollow marker did not hold its rate (it sent less than 95 % of it){}.",
            if failed > 0 { format!("; {failed} failed points are left out") } else { String::new() }
        );
        let l = Lines {
            title: format!("Latency against offered load at {conns} connections"),
            subtitle: "p50 ●, p99 ▲, p99.9 ✕ from the intended send · hollow: rate not held · log scale".into(),
            caption: caption.into(),
            x: XAxis::Rate(max_rate),
            y_desc: "milliseconds (log scale)".into(),
            lines,
            legend,
        };
        out.push((format!("c{conns}"), l, note));
    }
    out
}

/// One spectrum chart per connection count (and offered rate): (file stem, chart, note).
pub(super) fn spectra(points: &[&Point], order: &[String], caption: &str) -> Vec<(String, Lines, String)> {
    let mut out = Vec::new();
    for (conns, rate) in ascending(points.iter().map(|p| (p.connections, p.rate))) {
        let here: Vec<&Point> =
            points.iter().copied().filter(|p| p.connections == conns && p.rate == rate && p.ok).collect();
        let servers = servers(&here, order);
        let mut lines = Vec::new();
        for &(b, c) in &servers {
            let Some(h) = here.iter().find(|p| p.backend == *b).and_then(|p| p.spectrum.as_ref()) else { continue };
            if h.is_empty() {
                continue;
            }
            let mut pts: Vec<(f64, f64, bool)> = h
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| (-(1.0 - v.quantile_iterated_to()).log10(), v.value_iterated_to() as f64 / 1e6, true))
                .collect();
            // The maximum, at the last percentile the count can resolve.
            pts.push(((h.len() as f64).log10(), h.max() as f64 / 1e6, true));
            lines.push(Line { color: c, marker: Marker::None, points: pts });
        }
        if lines.is_empty() {
            continue;
        }
        let max_nines = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).fold(1.0, f64::max);
        let (title, subtitle, what) = match rate {
            Some(r) => (
                format!("Latency spectrum at {conns} connections, {}/s offered", compact(r as f64)),
                "from each request's intended send (coordinated omission corrected) · repeats merged · log scale",
                "from each request's intended send",
            ),
            None => (
                format!("Latency spectrum at {conns} connections"),
                "closed-loop round trips · repeats merged · log scale",
                "of closed-loop round trips — with many client threads on one CPU, the upper percentiles \
                 are mostly the client's own scheduling",
            ),
        };
        let note = format!(
            "Every measured request's latency {what}, at each percentile: the x axis counts nines (90 %, \
             99 %, 99.9 % … equally spaced), so the tail gets as much room as the median. The line ends at \
             the maximum."
        );
        let stem = match rate {
            Some(r) => format!("c{conns}_q{r}"),
            None => format!("c{conns}"),
        };
        let l = Lines {
            title,
            subtitle: subtitle.into(),
            caption: caption.into(),
            x: XAxis::Nines(max_nines.ceil()),
            y_desc: "milliseconds (log scale)".into(),
            lines,
            legend: servers.iter().map(|(b, c)| Key { name: b.to_string(), color: *c, mark: Mark::Box }).collect(),
        };
        out.push((stem, l, note));
    }
    out
}

/// A percentile as the nines axis labels it: 0 → "0 %", 2 → "99 %", 3 → "99.9 %".
fn nines_label(x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    match i as u32 {
        0 => "0 %".into(),
        1 => "90 %".into(),
        n => format!("99.{} %", "9".repeat(n as usize - 2)).replace(". %", " %"),
    }
}

/// The y range (ms) that holds every point, with room on a log axis.
fn y_range(lines: &[Line]) -> (f64, f64) {
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).filter(|y| *y > 0.0);
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if !lo.is_finite() || hi <= 0.0 {
        return (0.001, 1.0);
    }
    (lo / 1.6, hi * 1.6)
}

impl Figure for Lines {
    fn paint<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let body = frame(&root, &self.title, &self.subtitle, &self.legend, &self.caption)?;
        let (x_max, x_desc) = match self.x {
            XAxis::Rate(max) => (max * 1.05, "offered requests per second"),
            XAxis::Nines(n) => (n, "percentile (nines: each step is ten times rarer)"),
        };
        let (y_lo, y_hi) = y_range(&self.lines);
        let mut chart = ChartBuilder::on(&body)
            .margin(18)
            .x_label_area_size(56)
            .y_label_area_size(96)
            .build_cartesian_2d::<RangedCoordf64, _>((0f64..x_max).into(), (y_lo..y_hi).log_scale())
            .map_err(err)?;
        let x_label = |x: &f64| match self.x {
            XAxis::Rate(_) => compact(*x),
            XAxis::Nines(_) => nines_label(*x),
        };
        let y_label = |y: &f64| compact(*y);
        let mut mesh = chart.configure_mesh();
        mesh.x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .x_desc(x_desc)
            .y_desc(self.y_desc.as_str())
            .label_style((FAMILY, 17))
            .axis_desc_style((FAMILY, 19))
            // A log axis has many minor lines: faint, so the data stands out.
            .light_line_style(RGBColor(243, 243, 243));
        if let XAxis::Nines(n) = self.x {
            mesh.x_labels(n as usize + 1);
        }
        mesh.draw().map_err(err)?;
        for l in &self.lines {
            let path: Vec<(f64, f64)> = l.points.iter().map(|p| (p.0, p.1.max(y_lo))).collect();
            chart.draw_series([PathElement::new(path, l.color.stroke_width(2))]).map_err(err)?;
            for &(x, y, filled) in &l.points {
                l.marker.draw_at(chart.plotting_area(), (x, y.max(y_lo)), l.color, filled).map_err(err)?;
            }
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::nines_label;

    #[test]
    fn the_nines_axis_reads_as_percentiles() {
        let labels: Vec<String> = (0..=5).map(|i| nines_label(i as f64)).collect();
        assert_eq!(labels, ["0 %", "90 %", "99 %", "99.9 %", "99.99 %", "99.999 %"]);
        assert_eq!(nines_label(2.5), "");
    }
}
