//! PNG charts of the samples a benchmark measured, drawn next to its tables.
//!
//! Two kinds of chart, each a [`WIDTH`] x [`HEIGHT`] PNG:
//!
//! - [`cdf_chart`]: the cumulative distribution of latencies, one line per series, on a
//!   logarithmic latency axis (so a 1 ms local write and a 45 ms cross-DC write read on one
//!   chart);
//! - [`time_series_chart`]: one value per point in time (a write's replication lag by when it was
//!   written), one line per series.
//!
//! Text (title, axis labels, legend) needs a TTF font, read at run time from the first of
//! [`FONT_PATHS`] that exists (or from the file named by `COOPR_BENCH_FONT`). Without one the
//! charts are still drawn, without any text, and a note says so once on stderr.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of every chart, in pixels.
pub const WIDTH: u32 = 1000;
/// Height of every chart, in pixels.
pub const HEIGHT: u32 = 600;

/// Blank pixels around a chart.
const MARGIN: u32 = 16;
/// Width of the area left of a chart for the y tick labels and description.
const Y_LABEL_AREA: u32 = 60;
/// Height of a legend row, under the chart.
const LEGEND_ROW: u32 = 22;
/// Width of a legend entry's line sample and the gap after it.
const LEGEND_SWATCH: u32 = 32;
/// Above this many points a series of a time-series chart is drawn one pixel wide.
const DENSE_POINTS: usize = 500;

/// TTF fonts tried in order for the charts' text (Debian/Ubuntu package paths).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/lato/Lato-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The family name the font is registered under with plotters. Not one of plotters' default
/// families (`sans-serif`), so a text drawn without naming it fails instead of passing unseen.
const FAMILY: &str = "coopr-bench-sans";

/// Line colours of the series, in order (then repeated).
const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// Whether a font for text was registered with plotters (looked for once per process).
fn text_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let from_env = std::env::var("COOPR_BENCH_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_PATHS.iter().copied());
        for path in candidates {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        eprintln!(
            "note: no TTF font found (tried $COOPR_BENCH_FONT and {}); charts are drawn without text",
            FONT_PATHS.join(", ")
        );
        false
    })
}

/// Writes the latency CDF of every non-empty series to the PNG `path`: x the latency in ms
/// (log scale), y the fraction of writes at or below it.
pub fn cdf_chart(path: &Path, title: &str, series: &[(&str, &[Duration])]) -> anyhow::Result<()> {
    draw_cdf(path, title, series, text_available())
}

/// Writes every non-empty series of `(seconds, milliseconds)` points to the PNG `path` as a
/// line, in the order given: x seconds, y milliseconds (from 0).
pub fn time_series_chart(
    path: &Path,
    title: &str,
    series: &[(&str, &[(f64, f64)])],
) -> anyhow::Result<()> {
    draw_time_series(path, title, series, text_available())
}

/// The points of a CDF: each sample in ms (sorted) and the fraction of samples up to it.
fn cdf_points(samples: &[Duration]) -> Vec<(f64, f64)> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len() as f64;
    ms.into_iter()
        .enumerate()
        .map(|(i, x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// A number for tick labels: at most two decimals, none that are trailing zeros (`0.25`, `2.5`,
/// `10`).
fn tick_label(v: f64) -> String {
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

fn draw_cdf(
    path: &Path,
    title: &str,
    series: &[(&str, &[Duration])],
    text: bool,
) -> anyhow::Result<()> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, samples)| !samples.is_empty())
        .map(|(name, samples)| (*name, cdf_points(samples)))
        .collect();
    let xs = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0));
    let (low, high) = bounds(xs).context("a CDF chart needs at least one sample")?;
    // A log axis needs positive bounds; leave a margin either side.
    let low = (low / 1.25).max(1e-3);
    let high = (high * 1.25).max(low * 10.0);
    draw(
        path,
        title,
        &lines,
        text,
        false,
        (low..high).log_scale(),
        0.0..1.0,
        ("latency, ms (log scale)", "fraction of writes ≤ x"),
        &|v: &f64| tick_label(*v),
        &|v: &f64| tick_label(*v),
    )
}

fn draw_time_series(
    path: &Path,
    title: &str,
    series: &[(&str, &[(f64, f64)])],
    text: bool,
) -> anyhow::Result<()> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(name, points)| (*name, points.to_vec()))
        .collect();
    let all = || lines.iter().flat_map(|(_, points)| points.iter());
    let (x_low, x_high) = bounds(all().map(|p| p.0)).context("a chart needs at least one point")?;
    let (_, y_high) = bounds(all().map(|p| p.1)).context("a chart needs at least one point")?;
    let x_high = if x_high > x_low { x_high } else { x_low + 1.0 };
    let y_high = if y_high > 0.0 { y_high * 1.1 } else { 1.0 };
    draw(
        path,
        title,
        &lines,
        text,
        true,
        x_low..x_high,
        0.0..y_high,
        ("time, s", "ms"),
        &|v: &f64| tick_label(*v),
        &|v: &f64| tick_label(*v),
    )
}

/// The smallest and largest finite values, if any.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// Draws `lines` on axes `x` and `y` into the PNG `path`; the title, axis descriptions, tick
/// labels and a legend under the chart only when `text`. `thin_dense`: series of more than
/// [`DENSE_POINTS`] points are drawn one pixel wide (a noisy series reads better so).
#[allow(clippy::too_many_arguments)]
fn draw<X, Y>(
    path: &Path,
    title: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
    text: bool,
    thin_dense: bool,
    x: X,
    y: Y,
    (x_desc, y_desc): (&str, &str),
    x_label: &dyn Fn(&f64) -> String,
    y_label: &dyn Fn(&f64) -> String,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
    <X::CoordDescType as Ranged>::ValueType: Clone,
{
    if lines.is_empty() {
        bail!("nothing to draw in {}", path.display());
    }
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let legend_style =
        TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    // The legend's layout: as many columns as the longest name allows.
    let (columns, column_width, rows) = if text {
        let mut widest = 0;
        for (name, _) in lines {
            widest = widest.max(root.estimate_text_size(name, &legend_style)?.0);
        }
        let column_width = LEGEND_SWATCH + widest + 24;
        let usable = WIDTH - 2 * MARGIN - Y_LABEL_AREA;
        let columns = (usable / column_width.max(1)).clamp(1, lines.len() as u32);
        (
            columns,
            column_width,
            (lines.len() as u32).div_ceil(columns),
        )
    } else {
        (1, 0, 0)
    };
    let legend_height = if rows > 0 {
        rows * LEGEND_ROW + MARGIN
    } else {
        0
    };
    let (upper, lower) = root.split_vertically(HEIGHT - legend_height);
    let mut builder = ChartBuilder::on(&upper);
    builder.margin(MARGIN);
    // Without text there are no label areas: plotters draws axes and their labels there.
    if text {
        builder
            .caption(title, (FAMILY, 22))
            .x_label_area_size(44)
            .y_label_area_size(Y_LABEL_AREA);
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(x_label)
            .y_label_formatter(y_label)
            .label_style((FAMILY, 15));
    }
    mesh.draw()?;
    if !text {
        // The frame the axes would have drawn.
        let (w, h) = (WIDTH as i32, HEIGHT as i32);
        let m = MARGIN as i32;
        root.draw(&Rectangle::new(
            [(m, m), (w - m, h - m)],
            BLACK.stroke_width(1),
        ))?;
    }
    for (i, (_, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let width = if thin_dense && points.len() > DENSE_POINTS {
            1
        } else {
            2
        };
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(width),
        ))?;
    }
    for (i, (name, _)) in lines.iter().enumerate().filter(|_| text) {
        let color = COLORS[i % COLORS.len()];
        let (column, row) = (i as u32 % columns, i as u32 / columns);
        let x = (MARGIN + Y_LABEL_AREA + column * column_width) as i32;
        let y = (row * LEGEND_ROW + LEGEND_ROW / 2) as i32;
        let swatch = [(x, y), (x + LEGEND_SWATCH as i32 - 8, y)];
        lower.draw(&PathElement::new(swatch, color.stroke_width(3)))?;
        lower.draw(&Text::new(
            name.to_string(),
            (x + LEGEND_SWATCH as i32, y),
            legend_style.clone(),
        ))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG signature and the width and height of its header chunk (IHDR).
    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).expect("the chart was written");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        (be(16), be(20))
    }

    #[test]
    fn cdf_chart_writes_a_png_of_the_chart_size() {
        let dir = tempfile::tempdir().unwrap();
        let fast: Vec<Duration> = (1..=200)
            .map(|i| Duration::from_micros(900 + 10 * i))
            .collect();
        let slow: Vec<Duration> = (1..=200)
            .map(|i| Duration::from_micros(44_000 + 20 * i))
            .collect();
        for text in [true, false] {
            let path = dir.path().join(format!("cdf-{text}.png"));
            let series: [(&str, &[Duration]); 3] =
                [("fast", &fast), ("slow", &slow), ("none", &[])];
            draw_cdf(&path, "latency", &series, text && text_available()).unwrap();
            assert_eq!(png_size(&path), (WIDTH, HEIGHT));
        }
    }

    #[test]
    fn time_series_chart_writes_a_png_of_the_chart_size() {
        let dir = tempfile::tempdir().unwrap();
        let lag: Vec<(f64, f64)> = (0..300)
            .map(|i| (i as f64 / 100.0, 20.0 + (i % 7) as f64))
            .collect();
        let floor = [(0.0, 20.0), (3.0, 20.0)];
        for text in [true, false] {
            let path = dir.path().join(format!("lag-{text}.png"));
            let series: [(&str, &[(f64, f64)]); 2] = [("lag", &lag), ("floor", &floor)];
            draw_time_series(&path, "lag", &series, text && text_available()).unwrap();
            assert_eq!(png_size(&path), (WIDTH, HEIGHT));
        }
    }

    #[test]
    fn a_chart_without_samples_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        assert!(cdf_chart(&path, "empty", &[("none", &[])]).is_err());
        assert!(time_series_chart(&path, "empty", &[]).is_err());
    }

    #[test]
    fn tick_labels_drop_trailing_zeros() {
        let labels: Vec<String> = [0.0, 0.5, 1.25, 2.0, 10.0, 0.001].map(tick_label).into();
        assert_eq!(labels, ["0", "0.5", "1.25", "2", "10", "0"]);
    }

    #[test]
    fn cdf_points_climb_to_one() {
        let samples = [3, 1, 2].map(Duration::from_millis);
        assert_eq!(
            cdf_points(&samples),
            vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]
        );
    }
}
