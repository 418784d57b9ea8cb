//! The benchmark chart: time per op vs M (log-log), one panel per model shape, with the
//! fused kernel, both unfused baselines, and the bandwidth floor (minimum bytes over the
//! copy bandwidth measured in the same run).

use std::path::Path;

use plotters::prelude::*;

use crate::bench::{MODELS, Measurement, Variant, min_bytes};

const SERIES: [(Variant, RGBColor); 3] = [
    (Variant::Fused, RGBColor(200, 40, 40)),
    (Variant::NormCublas, RGBColor(40, 90, 200)),
    (Variant::NormNanofuse, RGBColor(60, 150, 60)),
];

/// Writes an SVG chart of `results` to `path`.
pub fn write_svg(
    path: &Path,
    results: &[Measurement],
    copy_gbs: f64,
    device: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("nanofuse: RMSNorm + QKV projection, {device} (CUDA-graph replay, cold weights)"),
        ("sans-serif", 20),
    )?;
    let models: Vec<&str> =
        MODELS.iter().map(|m| m.name).filter(|name| results.iter().any(|r| r.model == *name)).collect();
    let cols = if models.len() > 1 { 2 } else { 1 };
    let rows = models.len().div_ceil(cols).max(1);
    let panels = root.split_evenly((rows, cols));
    for (panel, name) in panels.iter().zip(&models) {
        let rs: Vec<&Measurement> = results.iter().filter(|r| r.model == *name).collect();
        let (mut lo_m, mut hi_m) = (f64::MAX, 1.0f64);
        let (mut lo_t, mut hi_t) = (f64::MAX, 0.0f64);
        for r in &rs {
            lo_m = lo_m.min(r.m as f64);
            hi_m = hi_m.max(r.m as f64);
            lo_t = lo_t.min(r.median_us).min(r.bytes as f64 / (copy_gbs * 1e3));
            hi_t = hi_t.max(r.median_us);
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(*name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((lo_m * 0.8..hi_m * 1.25).log_scale(), (lo_t * 0.7..hi_t * 1.4).log_scale())?;
        chart.configure_mesh().x_desc("M (tokens)").y_desc("µs per op").draw()?;
        for (variant, color) in SERIES {
            let mut pts: Vec<(f64, f64)> =
                rs.iter().filter(|r| r.variant == variant).map(|r| (r.m as f64, r.median_us)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(variant.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        if let Some(model) = MODELS.iter().find(|m| m.name == *name) {
            let mut ms: Vec<usize> = rs.iter().map(|r| r.m).collect();
            ms.sort_unstable();
            ms.dedup();
            let floor: Vec<(f64, f64)> =
                ms.iter().map(|&m| (m as f64, min_bytes(&model.shape, m) as f64 / (copy_gbs * 1e3))).collect();
            chart
                .draw_series(LineSeries::new(floor, BLACK.stroke_width(1)))?
                .label("bandwidth floor")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    }
    root.present()?;
    Ok(())
}
