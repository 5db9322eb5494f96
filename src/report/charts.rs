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

use super::metrics::{ChartSpec, Metric, METRICS};
use super::points::{sizes, Point};
use crate::files;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
/// Chart size in pixels.
pub const WIDTH_PX: u32 = 1280;
pub const HEIGHT_PX: u32 = 720;

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

/// Draws every charted metric (per message size when several were swept) into `dir`.
pub fn draw_all(dir: &Path, points: &[Point], order: &[String], caption: &str) -> anyhow::Result<Vec<Chart>> {
    register_bundled_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let sizes = sizes(points);
    let mut out = Vec::new();
    for &size in &sizes {
        let pts: Vec<&Point> = points.iter().filter(|p| p.size_bytes == size).collect();
        for (m, spec) in METRICS.iter().filter_map(|m| m.chart.as_ref().map(|c| (m, c))) {
            let file =
                if sizes.len() > 1 { format!("{}_s{size}.png", spec.file) } else { format!("{}.png", spec.file) };
            let cap = format!("{caption} · {size}-byte requests");
            let png = draw(m, spec, &pts, order, &cap).with_context(|| format!("drawing {file}"))?;
            files::write_whole(&dir.join(&file), &png)?;
            out.push(Chart { metric: m, file, size_bytes: size });
        }
    }
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

/// Draws one chart in memory and returns it as PNG.
fn draw(m: &Metric, spec: &ChartSpec, points: &[&Point], order: &[String], caption: &str) -> anyhow::Result<Vec<u8>> {
    let mut rgb = vec![0u8; (WIDTH_PX * HEIGHT_PX * 3) as usize];
    paint(&mut rgb, m, spec, points, order, caption)?;
    encode_png(&rgb, WIDTH_PX, HEIGHT_PX)
}

fn paint(
    rgb: &mut [u8],
    m: &Metric,
    spec: &ChartSpec,
    points: &[&Point],
    order: &[String],
    caption: &str,
) -> anyhow::Result<()> {
    // Each point's spread in the chart's unit; a point without the figure draws no bar.
    let spread = |p: &Point| p.get(m).map(|s| (s.mean * spec.scale, s.min * spec.scale, s.max * spec.scale));
    let mut conns: Vec<usize> = points.iter().map(|p| p.connections).collect();
    conns.sort_unstable();
    conns.dedup();
    let backends: Vec<&String> = order.iter().filter(|b| points.iter().any(|p| &&p.backend == b)).collect();
    let top = points.iter().filter_map(|p| spread(p)).map(|s| s.2).fold(0.0f64, f64::max);
    let y_max = if top > 0.0 { top * 1.18 } else { 1.0 };
    let n = conns.len().max(1);

    let root = BitMapBackend::with_buffer(rgb, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
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
        .y_desc(spec.axis)
        .label_style((FAMILY, 17))
        .axis_desc_style((FAMILY, 19))
        .draw()?;

    let group_w = 0.8;
    let bar_w = group_w / backends.len().max(1) as f64;
    let show_values = conns.len() * backends.len() <= 24;
    for (j, b) in backends.iter().enumerate() {
        let c = color(j);
        let mine: Vec<(usize, &Point)> = points
            .iter()
            .filter(|p| &&p.backend == b)
            .filter_map(|p| conns.iter().position(|&x| x == p.connections).map(|i| (i, *p)))
            .collect();
        let left = |i: usize| i as f64 - group_w / 2.0 + j as f64 * bar_w;
        chart
            .draw_series(mine.iter().filter_map(|&(i, p)| {
                let (v, _, _) = spread(p)?;
                Some(Rectangle::new([(left(i) + bar_w * 0.06, 0.0), (left(i) + bar_w * 0.94, v)], c.filled()))
            }))?
            .label(b.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 18, y + 7)], c.filled()));
        // Whiskers: min to max over repeats, with caps.
        for &(i, p) in &mine {
            let Some((mean, min, max)) = spread(p) else {
                let label = if p.ok { "n/a" } else { "Fail" };
                chart.draw_series([Text::new(
                    label.to_string(),
                    (left(i) + bar_w * 0.1, y_max * 0.03),
                    (FAMILY, 14).into_font().color(&RGBColor(90, 90, 90)),
                )])?;
                continue;
            };
            let mid = left(i) + bar_w / 2.0;
            let cap = bar_w * 0.18;
            let ink = BLACK.stroke_width(2);
            chart.draw_series([
                PathElement::new(vec![(mid, min), (mid, max)], ink),
                PathElement::new(vec![(mid - cap, min), (mid + cap, min)], ink),
                PathElement::new(vec![(mid - cap, max), (mid + cap, max)], ink),
            ])?;
            let text = if !p.ok {
                Some(("Fail".to_string(), RED))
            } else if show_values {
                Some((format_value(mean), BLACK))
            } else {
                None
            };
            if let Some((t, col)) = text {
                chart.draw_series([Text::new(
                    t,
                    (left(i) + bar_w * 0.1, max.max(mean) + y_max * 0.035),
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
    root.present()?;
    Ok(())
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
