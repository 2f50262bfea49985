//! Charts of `compare`, PNG and SVG: per workload, completion time relative to all local memory
//! against the local-memory ratio, one line per mode (and, for the touch workloads, a second
//! panel with the timed phase's throughput). Points are medians; bars span the runs.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::anyhow;
use plotters::{coord::Shift, prelude::*};

use crate::compare::{MachineInfo, Mode, Row, WorkloadReport};

/// TrueType fonts tried in turn (Debian: fonts-dejavu-core; others as fallbacks).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers a TrueType font as plotters' sans-serif, once.
fn font() -> anyhow::Result<()> {
    FONT.get_or_init(|| {
        let path = FONTS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!("no TrueType font found (install fonts-dejavu-core); tried {FONTS:?}")
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font("sans-serif", style, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"))?;
        }
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn colour(mode: Mode) -> RGBColor {
    match mode {
        Mode::Local => RGBColor(90, 90, 90),
        Mode::Yonder => RGBColor(0, 114, 178),
        Mode::Zram => RGBColor(0, 158, 115),
        Mode::File => RGBColor(213, 94, 0),
    }
}

/// The smallest and largest of `v` (None when empty or not finite).
fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
}

/// 1, 2 and 5 times the powers of ten in `lo..=hi`: labels a reader can interpolate between.
fn key_points(lo: f64, hi: f64) -> Vec<f64> {
    let mut points = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let p = decade * m;
            if (lo..=hi).contains(&p) {
                points.push(p);
            }
        }
        decade *= 10.0;
    }
    points
}

fn err(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Draws `w`'s chart as `compare-<name>.png` and `.svg` in `dir`; returns their paths.
pub fn chart(
    w: &WorkloadReport,
    machine: &MachineInfo,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    font()?;
    let stem: String = w
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let png = dir.join(format!("compare-{stem}.png"));
    let svg = dir.join(format!("compare-{stem}.svg"));
    let size = if w.has_throughput {
        (1400, 560)
    } else {
        (800, 560)
    };
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw(&root, w, machine)?;
        root.present().map_err(err)?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(&root, w, machine)?;
        root.present().map_err(err)?;
    }
    Ok((png, svg))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    w: &WorkloadReport,
    machine: &MachineInfo,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "{} ({:.0} MiB anonymous): Yonder vs kernel swap — {} vCPUs, {:.0} GiB, Linux {}",
        w.name,
        w.anon_bytes as f64 / (1u64 << 20) as f64,
        machine.cpus,
        machine.memory_bytes as f64 / (1u64 << 30) as f64,
        machine.kernel
    );
    let root = root
        .titled(
            &title,
            ("sans-serif", 24).into_font().style(FontStyle::Bold),
        )
        .map_err(err)?;
    let panels: Vec<DrawingArea<DB, Shift>> = if w.has_throughput {
        let (a, b) = root.split_horizontally(root.dim_in_pixel().0 / 2);
        vec![a, b]
    } else {
        vec![root]
    };
    panel(
        &panels[0],
        w,
        "completion time ÷ all local (log scale; lower is better)",
        SeriesLabelPosition::UpperRight,
        |r| Some(r.slowdown),
        |r| {
            let (lo, hi) = min_max(&r.times_s)?;
            let per_s = r.slowdown / r.time_s;
            Some((lo * per_s, hi * per_s))
        },
    )?;
    if let Some(p) = panels.get(1) {
        panel(
            p,
            w,
            "touches/s in the timed phase (log scale; higher is better)",
            SeriesLabelPosition::LowerRight,
            |r| r.throughput,
            |r| min_max(&r.throughputs),
        )?;
    }
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    w: &WorkloadReport,
    y_label: &str,
    legend: SeriesLabelPosition,
    value: impl Fn(&Row) -> Option<f64>,
    spread: impl Fn(&Row) -> Option<(f64, f64)>,
) -> anyhow::Result<()> {
    let ratios: Vec<u32> = w
        .rows
        .iter()
        .filter(|r| r.mode != Mode::Local)
        .map(|r| r.ratio)
        .collect();
    let lo_x = ratios.iter().copied().min().unwrap_or(100).min(100) as f64;
    let values: Vec<f64> = w
        .rows
        .iter()
        .filter_map(&value)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let lo = if lo.is_finite() { lo } else { 1.0 };
    let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 2.0);
    let reference = w
        .rows
        .iter()
        .find(|r| r.mode == Mode::Local)
        .and_then(&value);

    // Headroom for the legend on its side, so it covers no point.
    let (y_lo, y_hi) = match legend {
        SeriesLabelPosition::LowerRight | SeriesLabelPosition::LowerLeft => (lo / 4.0, hi * 1.3),
        _ => (lo / 1.3, hi * 4.0),
    };
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (lo_x - 5.0)..105.0,
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(key_points(y_lo, y_hi)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_desc("local memory, % of the anonymous footprint")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0} %"))
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{:.0}M", y / 1e6)
            } else if *y >= 1e3 {
                format!("{:.0}k", y / 1e3)
            } else if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;

    if let Some(y) = reference {
        let c = colour(Mode::Local);
        chart
            .draw_series(LineSeries::new(
                [(lo_x - 5.0, y), (105.0, y)],
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(Mode::Local.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], c.stroke_width(2)));
    }
    for mode in [Mode::Yonder, Mode::Zram, Mode::File] {
        let mut points: Vec<(f64, f64)> = w
            .rows
            .iter()
            .filter(|r| r.mode == mode)
            .filter_map(|r| Some((f64::from(r.ratio), value(r)?)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        if points.is_empty() {
            continue;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = colour(mode);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(3)))
            .map_err(err)?
            .label(mode.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 5, c.filled())))
            .map_err(err)?;
        // The spread of the runs around each median.
        chart
            .draw_series(
                w.rows
                    .iter()
                    .filter(|r| r.mode == mode)
                    .filter_map(|r| Some((f64::from(r.ratio), value(r)?, spread(r)?)))
                    .filter(|(_, _, (lo, hi))| *lo > 0.0 && hi > lo)
                    .map(|(x, y, (lo, hi))| {
                        ErrorBar::new_vertical(x, lo, y, hi, c.stroke_width(2), 10)
                    }),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_points_are_1_2_5_per_decade() {
        assert_eq!(key_points(0.8, 30.0), [1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(key_points(1500.0, 6000.0), [2000.0, 5000.0]);
    }
}
