//! The demo's picture: power against cap per policy, and the GPU clocks
//! that produced it, over time.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, anyhow};

use plotters::prelude::*;

use crate::samples::Recording;

/// Debian's fonts-dejavu-core, installed by `make setup`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let bytes = FONT_PATHS
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .context("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
    // plotters keeps fonts for the whole process; one leak per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("DejaVuSans.ttf is not a usable font"))
}

/// Draws `recording` into a PNG at `path`.
pub fn draw(recording: &Recording, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(560);
    let end = recording.policies.iter().map(|p| p.t).fold(1.0, f64::max);

    let max_power = recording
        .policies
        .iter()
        .flat_map(|p| [p.power_watts, p.cap_watts])
        .fold(100.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption("Power vs cap per policy (W)", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..max_power)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("watts")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    let mut by_policy: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for p in &recording.policies {
        by_policy
            .entry(&p.policy)
            .or_default()
            .push((p.t, p.power_watts, p.cap_watts));
    }
    for (index, (policy, points)) in by_policy.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(t, w, _)| (*t, *w)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{policy} power"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(t, _, cap)| (*t, *cap)),
                color.mix(0.5).stroke_width(4),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{policy} cap"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5).stroke_width(4))
            });
    }
    for (t, what) in &recording.events {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*t, 0.0), (*t, max_power)],
                BLACK.mix(0.4),
            )))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                what.clone(),
                (*t + end * 0.005, max_power * 0.97),
                ("sans-serif", 14),
            )))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    let max_clock = recording
        .gpus
        .iter()
        .filter_map(|g| g.clock_mhz)
        .fold(500.0, f64::max)
        * 1.1;
    let mut clocks = ChartBuilder::on(&bottom)
        .caption("SM clock per GPU (MHz)", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..max_clock)
        .map_err(|e| anyhow!("{e}"))?;
    clocks
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("MHz")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let mut by_gpu: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for g in &recording.gpus {
        if let (Some(clock), Some(_)) = (g.clock_mhz, &g.policy) {
            by_gpu
                .entry((g.node.clone(), g.uuid.clone()))
                .or_default()
                .push((g.t, clock));
        }
    }
    for (index, ((node, uuid), points)) in by_gpu.iter().enumerate() {
        let color = Palette99::pick(index + 3).to_rgba();
        let short = uuid.get(..12).unwrap_or(uuid);
        clocks
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{node} {short}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !by_gpu.is_empty() {
        clocks
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
