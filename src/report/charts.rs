//! Grouped bar charts drawn with plotters, as PNG and SVG: x = connections, one bar per
//! server, a whisker from the min to the max over repeats; and ratio charts, one bar per
//! server against the baseline, with its 95 % interval.
//!
//! Text is drawn with a bundled font (DejaVu Sans, Bitstream Vera license, see
//! `DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so charts render on a
//! machine with no fonts and no fontconfig; the SVGs name it and load it from beside them.
//! plotters has no grouped-bar series, so each bar is a rectangle offset in its category.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::export::ratio;
use super::metrics::{Metric, METRICS};
use super::points::{sizes, Point};
use crate::files;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
/// The font file the SVGs load, written beside them.
const FONT_FILE: &str = "DejaVuSans.ttf";
/// Chart size in pixels.
pub const WIDTH_PX: u32 = 1280;
pub const HEIGHT_PX: u32 = 720;

/// A chart that was drawn (as `file`, and the same name with `.svg`).
pub struct Chart {
    pub title: String,
    /// File name inside `plots/`.
    pub file: String,
    pub size_bytes: usize,
    /// What it shows and how to read it, for the summary.
    pub note: String,
    /// A chart of ratios to the baseline.
    pub ratio: bool,
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

/// One bar: its value and whisker, or why there is none.
enum Bar {
    Value { value: f64, lo: f64, hi: f64 },
    Missing(&'static str),
}

/// A chart's data, in the units it shows.
struct Bars {
    title: String,
    subtitle: String,
    axis: String,
    caption: String,
    x_labels: Vec<String>,
    /// Series name and one bar per x.
    series: Vec<(String, Vec<Bar>)>,
    /// A horizontal line (1.0 on a ratio chart).
    reference: Option<f64>,
    /// The colour of the first series: a server keeps its colour on every chart.
    first_color: usize,
    /// How a bar's value is labelled.
    label: fn(f64) -> String,
}

/// Draws every charted metric, and the ratio charts, per request size into `dir`.
pub fn draw_all(dir: &Path, points: &[Point], order: &[String], caption: &str) -> anyhow::Result<Vec<Chart>> {
    register_bundled_font()?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create '{}': {e}", dir.display()))?;
    files::write_whole(&dir.join(FONT_FILE), FONT)?;
    let sizes = sizes(points);
    let mut out = Vec::new();
    for &size in &sizes {
        let pts: Vec<&Point> = points.iter().filter(|p| p.size_bytes == size).collect();
        let suffix = if sizes.len() > 1 { format!("_s{size}") } else { String::new() };
        let cap = format!("{caption} · {size}-byte requests");
        for m in METRICS.iter().filter(|m| m.chart.is_some()) {
            let (bars, note) = metric_bars(m, &pts, order, &cap);
            let file = format!("{}{suffix}.png", m.chart.as_ref().map_or(m.key, |c| c.file));
            write_chart(dir, &file, &bars)?;
            out.push(Chart { title: m.title.into(), file, size_bytes: size, note, ratio: false });
        }
        for m in METRICS.iter().filter(|m| m.ratio_chart) {
            let Some((bars, note)) = ratio_bars(m, points, &pts, order, &cap) else { continue };
            let file = format!("ratio_{}{suffix}.png", m.chart.as_ref().map_or(m.key, |c| c.file));
            write_chart(dir, &file, &bars)?;
            out.push(Chart { title: bars.title.clone(), file, size_bytes: size, note, ratio: true });
        }
    }
    Ok(out)
}

/// The x values: the connection counts of these points, ascending.
fn connections(points: &[&Point]) -> Vec<usize> {
    let mut conns: Vec<usize> = points.iter().map(|p| p.connections).collect();
    conns.sort_unstable();
    conns.dedup();
    conns
}

fn metric_bars(m: &Metric, points: &[&Point], order: &[String], caption: &str) -> (Bars, String) {
    let conns = connections(points);
    let spec = m.chart.as_ref();
    let scale = spec.map_or(1.0, |c| c.scale);
    let repeats = points.iter().map(|p| p.repeats).max().unwrap_or(0);
    let series = order
        .iter()
        .filter(|b| points.iter().any(|p| &&p.backend == b))
        .map(|b| {
            let bars = conns
                .iter()
                .map(|&c| match points.iter().find(|p| &p.backend == b && p.connections == c) {
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
        x_labels: conns.iter().map(|c| c.to_string()).collect(),
        series,
        reference: None,
        first_color: 0,
        label: compact,
    };
    (bars, note)
}

fn ratio_bars(m: &Metric, all: &[Point], points: &[&Point], order: &[String], caption: &str) -> Option<(Bars, String)> {
    let base = order.first()?;
    let conns = connections(points);
    let series: Vec<(String, Vec<Bar>)> = order
        .iter()
        .skip(1)
        .filter(|b| points.iter().any(|p| &&p.backend == b))
        .map(|b| {
            let bars = conns
                .iter()
                .map(|&c| {
                    let p = points.iter().find(|p| &p.backend == b && p.connections == c);
                    match p.and_then(|p| ratio(all, p, m, base)) {
                        Some(r) => {
                            let (lo, hi) = r.ci95.unwrap_or((r.ratio, r.ratio));
                            Bar::Value { value: r.ratio, lo, hi }
                        }
                        None => Bar::Missing("n/a"),
                    }
                })
                .collect();
            (b.clone(), bars)
        })
        .collect();
    if series.is_empty() {
        return None;
    }
    let title = format!("{} relative to {base}", m.title);
    let subtitle = format!("whiskers: 95 % confidence interval of the paired ratio · 1 = same as {base}");
    let note = format!(
        "Each bar is the server's {} divided by {base}'s (the geometric mean of paired repeats); whiskers \
         are its 95 % confidence interval; a whisker that crosses the line at 1 means no significant \
         difference; {}.",
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
            x_labels: conns.iter().map(|c| c.to_string()).collect(),
            series,
            reference: Some(1.0),
            first_color: 1,
            label: |r| format!("{r:.2}"),
        },
        note,
    ))
}

/// Draws `bars` as `file` (PNG) and its SVG twin in `dir`; each is written whole.
fn write_chart(dir: &Path, file: &str, bars: &Bars) -> anyhow::Result<()> {
    let mut rgb = vec![0u8; (WIDTH_PX * HEIGHT_PX * 3) as usize];
    paint(BitMapBackend::with_buffer(&mut rgb, (WIDTH_PX, HEIGHT_PX)).into_drawing_area(), bars)
        .map_err(|e| anyhow!("drawing {file}: {e}"))?;
    files::write_whole(&dir.join(file), &encode_png(&rgb, WIDTH_PX, HEIGHT_PX)?)?;
    let mut svg = String::new();
    paint(SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area(), bars)
        .map_err(|e| anyhow!("drawing {file} as SVG: {e}"))?;
    files::write_whole(&dir.join(file).with_extension("svg"), with_bundled_font(&svg).as_bytes())
}

/// An SVG that asks for the bundled font (written beside it) instead of any sans-serif.
fn with_bundled_font(svg: &str) -> String {
    let style = format!(
        "<defs><style>@font-face{{font-family:'DejaVu Sans';src:url('{FONT_FILE}') format('truetype');}}</style></defs>"
    );
    let svg = svg.replace("font-family=\"sans-serif\"", "font-family=\"DejaVu Sans, sans-serif\"");
    match svg.find('>') {
        Some(i) if svg.starts_with("<svg") => format!("{}{style}{}", &svg[..=i], &svg[i + 1..]),
        _ => svg,
    }
}

/// An RGB image as PNG bytes.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(rgb)?;
    Ok(out)
}

/// Series colours by position (the baseline first): the Okabe-Ito palette, which stays
/// distinct for colour-blind readers, then plotters' large palette.
fn color(i: usize) -> RGBColor {
    const OKABE_ITO: [RGBColor; 7] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(213, 94, 0),
        RGBColor(120, 120, 120),
    ];
    OKABE_ITO.get(i).copied().unwrap_or_else(|| {
        let c = Palette99::pick(i).to_rgba();
        RGBColor(c.0, c.1, c.2)
    })
}

/// Value labels turn upright below this bar width, so neighbours never overlap.
const UPRIGHT_BELOW_PX: f64 = 48.0;

fn paint<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, bars: &Bars) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let (main, foot) = root.split_vertically(HEIGHT_PX - 34);
    let (head, body) = main.split_vertically(92);
    head.draw(&Text::new(
        bars.title.clone(),
        ((WIDTH_PX / 2) as i32, 8),
        (FAMILY, 28).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(err)?;
    head.draw(&Text::new(
        bars.subtitle.clone(),
        ((WIDTH_PX / 2) as i32, 42),
        (FAMILY, 16).into_font().color(&RGBColor(80, 80, 80)).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(err)?;
    legend(&head, bars, 66).map_err(err)?;
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
        .x_desc("concurrent connections")
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
    foot.draw(&Text::new(bars.caption.clone(), (18, 6), (FAMILY, 16).into_font().color(&RGBColor(70, 70, 70))))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The series' colours and names in one centred row at height `y` of `area`, where they
/// cannot cover a bar.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    bars: &Bars,
    y: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    // An estimate of the text width (the font averages about 9.5 px a character at 17 px).
    let widths: Vec<i32> = bars.series.iter().map(|(n, _)| 30 + (n.chars().count() as f64 * 9.5) as i32 + 24).collect();
    let mut x = (WIDTH_PX as i32 - widths.iter().sum::<i32>()) / 2;
    for (j, ((name, _), w)) in bars.series.iter().zip(&widths).enumerate() {
        area.draw(&Rectangle::new([(x, y), (x + 18, y + 16)], color(bars.first_color + j).filled()))?;
        area.draw(&Text::new(name.clone(), (x + 26, y), (FAMILY, 17).into_font().color(&BLACK)))?;
        x += w;
    }
    Ok(())
}

/// A number as a reader wants it on a chart: `50k`, `1.2M`, `0.42`, never `5.51e-4`.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        trim(format!("{:.1}", v / 1e6)) + "M"
    } else if a >= 1e5 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else {
        // Two significant figures.
        let decimals = (-a.log10()).floor() as usize + 2;
        trim(format!("{v:.decimals$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn compact_numbers_read_at_a_glance() {
        assert_eq!(compact(115_468.0), "115k");
        assert_eq!(compact(71_441.2), "71.4k");
        assert_eq!(compact(2_500_000.0), "2.5M");
        assert_eq!(compact(5.26), "5.26");
        assert_eq!(compact(0.000551), "0.00055");
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(40.0), "40");
    }
}
