//! The benchmark chart: time per op vs M (log-log), one panel per op and model shape, with
//! the fused kernel, both unfused baselines (and for the MLP ops the public API, which
//! continues the fused line above M = 16 on cuBLAS), and the bandwidth floor (minimum bytes
//! over the copy bandwidth measured in the same run).

use std::path::Path;

use plotters::prelude::*;

use crate::bench::{MODELS, Measurement, Op, Variant};

const QKV_SERIES: [(Variant, RGBColor); 3] = [
    (Variant::Fused, RGBColor(200, 40, 40)),
    (Variant::NormCublas, RGBColor(40, 90, 200)),
    (Variant::NormNanofuse, RGBColor(60, 150, 60)),
];

const MLP_SERIES: [(Variant, RGBColor); 4] = [
    (Variant::Fused, RGBColor(200, 40, 40)),
    (Variant::Api, RGBColor(230, 140, 20)),
    (Variant::NormCublas, RGBColor(40, 90, 200)),
    (Variant::NormNanofuse, RGBColor(60, 150, 60)),
];

/// The panels: (op, model) pairs present in `results`, ops in `Op::ALL` order, models in
/// `MODELS` order.
fn panels(results: &[Measurement]) -> Vec<(Op, &'static str)> {
    let present = |op: Op, name: &str| results.iter().any(|r| r.op == op && r.model == name);
    Op::ALL
        .iter()
        .flat_map(|&op| MODELS.iter().filter(move |m| present(op, m.name)).map(move |m| (op, m.name)))
        .collect()
}

/// The chart's title for the ops present.
fn title(ops: &[Op], device: &str) -> String {
    let names: Vec<&str> = ops.iter().map(|op| op.title()).collect();
    format!("nanofuse: {}, {device} (CUDA-graph replay, cold weights)", names.join("; "))
}

/// Writes an SVG chart of `results` to `path`.
pub fn write_svg(
    path: &Path,
    results: &[Measurement],
    copy_gbs: f64,
    device: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let panels = panels(results);
    let mut ops: Vec<Op> = panels.iter().map(|p| p.0).collect();
    ops.dedup();
    // One op: a 2-column grid of its shapes; several: a row per op, a column per shape.
    let (rows, cols) = match ops.len() {
        0 | 1 => {
            let cols = if panels.len() > 1 { 2 } else { 1 };
            (panels.len().div_ceil(cols).max(1), cols)
        }
        n => (n, panels.iter().filter(|p| p.0 == ops[0]).count().max(1)),
    };
    let size = (600 * cols as u32, 450 * rows as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&title(&ops, device), ("sans-serif", 20))?;
    let areas = root.split_evenly((rows, cols));
    for (i, &(op, name)) in panels.iter().enumerate() {
        let row = ops.iter().position(|&o| o == op).unwrap_or(0);
        let col = if ops.len() > 1 { panels[..i].iter().filter(|p| p.0 == op).count() } else { i };
        let index = if ops.len() > 1 { row * cols + col } else { i };
        let caption = if ops.len() > 1 { format!("{}: {name}", op.label()) } else { name.to_string() };
        let rs: Vec<&Measurement> = results.iter().filter(|r| r.op == op && r.model == name).collect();
        if let Some(area) = areas.get(index) {
            draw_panel(area, &caption, op, &rs, copy_gbs)?;
        }
    }
    root.present()?;
    Ok(())
}

/// One panel: the series of `op` and the floor, from the measurements of one op and shape.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    op: Op,
    rs: &[&Measurement],
    copy_gbs: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let floor_us = |r: &Measurement| r.bytes as f64 / (copy_gbs * 1e3);
    let (mut lo_m, mut hi_m) = (f64::MAX, 1.0f64);
    let (mut lo_t, mut hi_t) = (f64::MAX, 0.0f64);
    for r in rs {
        lo_m = lo_m.min(r.m as f64);
        hi_m = hi_m.max(r.m as f64);
        lo_t = lo_t.min(r.median_us).min(floor_us(r));
        hi_t = hi_t.max(r.median_us);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((lo_m * 0.8..hi_m * 1.25).log_scale(), (lo_t * 0.7..hi_t * 1.4).log_scale())?;
    chart.configure_mesh().x_desc("M (tokens)").y_desc("µs per op").draw()?;
    let series: &[(Variant, RGBColor)] = if op == Op::Qkv { &QKV_SERIES } else { &MLP_SERIES };
    for &(variant, color) in series {
        let mut pts: Vec<(f64, f64)> =
            rs.iter().filter(|r| r.variant == variant).map(|r| (r.m as f64, r.median_us)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(variant.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    // One floor point per M (every variant of a cell has the same minimum bytes).
    let mut floor: Vec<(f64, f64)> = rs.iter().map(|r| (r.m as f64, floor_us(r))).collect();
    floor.sort_by(|a, b| a.0.total_cmp(&b.0));
    floor.dedup_by(|a, b| a.0 == b.0);
    chart
        .draw_series(LineSeries::new(floor, BLACK.stroke_width(1)))?
        .label("bandwidth floor")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    Ok(())
}
