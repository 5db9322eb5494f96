//! Charts drawn with plotters, as PNG and SVG: `bars` (each charted metric by
//! connections, and each server's ratio to the baseline) and `lines` (latency against
//! offered rate — the knee — and latency spectra). Every chart has the same frame: title,
//! subtitle, legend, and a caption naming the machine.
//!
//! Text is drawn with a bundled font (DejaVu Sans, Bitstream Vera license, see
//! `DejaVuSans-LICENSE.txt`) through plotters' `ab_glyph` backend, so charts render on a
//! machine with no fonts and no fontconfig; the SVGs name it and load it from beside them.

mod bars;
mod lines;

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use super::metrics::{Metric, METRICS};
use super::points::{sizes, Point};
use crate::files;
use crate::workload::Workload;

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "sans-serif";
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
    pub kind: Kind,
}

/// What a chart shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A metric by connections (and rate), one bar per server.
    Bars,
    /// Each server's ratio to the baseline, with its interval.
    Ratio,
    /// Latency percentiles against offered rate.
    Knee,
    /// A latency distribution on a "nines" axis.
    Spectrum,
}

/// Anything drawn into a frame of [`WIDTH_PX`] × [`HEIGHT_PX`].
trait Figure {
    fn paint<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static;
}

/// A legend entry: a name and how its series looks.
struct Key {
    name: String,
    color: RGBColor,
    mark: Mark,
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Mark {
    /// A filled box (a bar's colour).
    Box,
    /// A line with a marker, as on line charts.
    Line(lines::Marker),
}

impl Key {
    fn boxed(name: &str, color: RGBColor) -> Key {
        Key { name: name.to_string(), color, mark: Mark::Box }
    }
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

/// Draws every charted metric, the ratio charts, and — from the latency histograms — the
/// knee and spectrum charts, per request size and workload, into `dir`; and, when several
/// workloads ran, each server's ratio to the baseline across them.
pub fn draw_all(dir: &Path, points: &[Point], order: &[String], caption: &str) -> anyhow::Result<Vec<Chart>> {
    register_bundled_font()?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create '{}': {e}", dir.display()))?;
    files::write_whole(&dir.join(FONT_FILE), FONT)?;
    let sizes = sizes(points);
    let mut groups: Vec<(usize, Workload)> = points.iter().map(|p| (p.size_bytes, p.workload)).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut out = Vec::new();
    for &(size, workload) in &groups {
        let pts: Vec<&Point> = points.iter().filter(|p| p.size_bytes == size && p.workload == workload).collect();
        let mut suffix = if sizes.len() > 1 { format!("_s{size}") } else { String::new() };
        let mut cap = format!("{caption} · {size}-byte requests");
        if let Some(w) = workload.stem() {
            suffix.push_str(&format!("_w{w}"));
            cap.push_str(&format!(" · {}", workload.name()));
        }
        let mut add =
            |file: String, title: String, note: String, kind: Kind, fig: &dyn Fn(&Path, &str) -> anyhow::Result<()>| {
                fig(dir, &file)?;
                out.push(Chart { title, file, size_bytes: size, note, kind });
                anyhow::Ok(())
            };
        for m in charted(&pts) {
            let (b, note) = bars::metric_bars(m, &pts, order, &cap);
            let file = format!("{}{suffix}.png", m.chart.as_ref().map_or(m.key, |c| c.file));
            add(file, m.title.into(), note, Kind::Bars, &|d, f| write_chart(d, f, &b))?;
        }
        for m in METRICS.iter().filter(|m| m.ratio_chart && pts.iter().any(|p| p.get(m).is_some())) {
            let Some((b, note)) = bars::ratio_bars(m, points, &pts, order, &cap) else { continue };
            let file = format!("ratio_{}{suffix}.png", m.chart.as_ref().map_or(m.key, |c| c.file));
            add(file, b.title.clone(), note, Kind::Ratio, &|d, f| write_chart(d, f, &b))?;
        }
        for (stem, l, note) in lines::knees(&pts, order, &cap) {
            let file = format!("knee_{stem}{suffix}.png");
            add(file, l.title.clone(), note, Kind::Knee, &|d, f| write_chart(d, f, &l))?;
        }
        for (stem, l, note) in lines::spectra(&pts, order, &cap) {
            let file = format!("spectrum_{stem}{suffix}.png");
            add(file, l.title.clone(), note, Kind::Spectrum, &|d, f| write_chart(d, f, &l))?;
        }
    }
    for (file, b, note, size) in bars::across_workloads(points, order, caption) {
        write_chart(dir, &file, &b)?;
        out.push(Chart { title: b.title.clone(), file, size_bytes: size, note, kind: Kind::Ratio });
    }
    Ok(out)
}

/// The metrics drawn as charts for these points: those with a chart that some point has
/// a value of (a closed-loop sweep has no corrected latency to draw).
pub fn charted<'a>(points: &'a [&Point]) -> impl Iterator<Item = &'static Metric> + 'a {
    METRICS.iter().filter(|m| m.chart.is_some() && points.iter().any(|p| p.get(m).is_some()))
}

/// The x values: the (connections, offered rate) places of these points, ascending.
fn places(points: &[&Point]) -> Vec<(usize, Option<u64>)> {
    let mut xs: Vec<(usize, Option<u64>)> = points.iter().map(|p| (p.connections, p.rate)).collect();
    xs.sort_unstable();
    xs.dedup();
    xs
}

/// What the x axis of bars at `xs` shows.
fn x_desc(xs: &[(usize, Option<u64>)]) -> &'static str {
    if xs.iter().any(|x| x.1.is_some()) {
        "concurrent connections · offered requests per second"
    } else {
        "concurrent connections"
    }
}

/// An x label: the connections, and the offered rate when there is one.
fn place_label(&(conns, rate): &(usize, Option<u64>)) -> String {
    match rate {
        Some(r) => format!("{conns} · {}/s", compact(r as f64)),
        None => conns.to_string(),
    }
}

/// The point of `backend` at `place`.
fn at<'a>(points: &[&'a Point], backend: &str, &(conns, rate): &(usize, Option<u64>)) -> Option<&'a Point> {
    points.iter().copied().find(|p| p.backend == backend && p.connections == conns && p.rate == rate)
}

/// Draws `fig` as `file` (PNG) and its SVG twin in `dir`; each is written whole.
fn write_chart(dir: &Path, file: &str, fig: &impl Figure) -> anyhow::Result<()> {
    let mut rgb = vec![0u8; (WIDTH_PX * HEIGHT_PX * 3) as usize];
    fig.paint(BitMapBackend::with_buffer(&mut rgb, (WIDTH_PX, HEIGHT_PX)).into_drawing_area())
        .map_err(|e| anyhow!("drawing {file}: {e}"))?;
    files::write_whole(&dir.join(file), &encode_png(&rgb, WIDTH_PX, HEIGHT_PX)?)?;
    let mut svg = String::new();
    fig.paint(SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area())
        .map_err(|e| anyhow!("drawing {file} as SVG: {e}"))?;
    files::write_whole(&dir.join(file).with_extension("svg"), with_bundled_font(&svg).as_bytes())
}

/// Fills `root` white and draws the frame every chart shares — title, subtitle, a legend
/// row, and the caption at the foot — and returns the area left for the plot.
fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
    legend: &[Key],
    caption: &str,
) -> Result<DrawingArea<DB, Shift>, String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let (main, foot) = root.split_vertically(HEIGHT_PX - 34);
    let (head, body) = main.split_vertically(92);
    let centred = |size: u32, c: RGBColor| (FAMILY, size).into_font().color(&c).pos(Pos::new(HPos::Center, VPos::Top));
    head.draw(&Text::new(title.to_string(), ((WIDTH_PX / 2) as i32, 8), centred(28, BLACK))).map_err(err)?;
    head.draw(&Text::new(subtitle.to_string(), ((WIDTH_PX / 2) as i32, 42), centred(16, RGBColor(80, 80, 80))))
        .map_err(err)?;
    draw_legend(&head, legend, 66).map_err(err)?;
    foot.draw(&Text::new(caption.to_string(), (18, 6), (FAMILY, 16).into_font().color(&RGBColor(70, 70, 70))))
        .map_err(err)?;
    Ok(body)
}

/// The legend in one centred row at height `y` of `area`, where it cannot cover the plot.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    keys: &[Key],
    y: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    // An estimate of the text width (the font averages about 9.5 px a character at 17 px).
    let widths: Vec<i32> = keys.iter().map(|k| 30 + (k.name.chars().count() as f64 * 9.5) as i32 + 24).collect();
    let mut x = (WIDTH_PX as i32 - widths.iter().sum::<i32>()) / 2;
    for (k, w) in keys.iter().zip(&widths) {
        match k.mark {
            Mark::Box => area.draw(&Rectangle::new([(x, y), (x + 18, y + 16)], k.color.filled()))?,
            Mark::Line(m) => {
                area.draw(&PathElement::new(vec![(x - 4, y + 8), (x + 22, y + 8)], k.color.stroke_width(2)))?;
                m.draw_at(area, (x + 9, y + 8), k.color, true)?;
            }
        }
        area.draw(&Text::new(k.name.clone(), (x + 26, y), (FAMILY, 17).into_font().color(&BLACK)))?;
        x += w;
    }
    Ok(())
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
