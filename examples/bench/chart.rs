//! `latency.svg`: latency of `GET /` over time under handover's restarts (one panel per
//! protocol of the hyper client), then answered and failed requests per 100 ms for handover,
//! tableflip and a naive restart under the same restarts.

use std::path::Path;

use crate::compare::{ClientRun, CountBucket};
use crate::report::{Bucket, ClientPhase, Results};

/// One line of the latency chart: its name, colour and value per bucket.
type Line = (&'static str, plotters::style::RGBColor, fn(&Bucket) -> f64);

/// Latency of `GET /` over time, one panel per client phase, restarts as vertical lines; then
/// answered and failed requests per 100 ms for each server of the comparison.
pub(crate) fn draw(results: &Results, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let phases: Vec<&ClientPhase> = results.client.iter().collect();
    let runs = &results.comparison.client;
    let count_panels = if runs.is_empty() { 0 } else { 2 };
    let rows = (phases.len() + count_panels).max(1);
    let root = SVGBackend::new(path, (1200, 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, 1));
    if count_panels > 0 {
        let connections = results.settings.connections;
        let title =
            format!("HTTP/1.1 hyper client, {connections} connections: answered GET per 100 ms");
        counts(&panels[phases.len()], runs, &title, |b| b.ok)?;
        let title = "… failed requests per 100 ms (each server's restarts as thin lines)";
        counts(&panels[phases.len() + 1], runs, title, |b| b.failed)?;
    }
    for (panel, phase) in panels.iter().zip(&phases) {
        let chart = &phase.chart;
        // Whole decades, so the log axis has labels at both ends (0.1, 1, 10, 100 ms).
        let highest = chart.buckets.iter().map(|b| b.max_ms).fold(1.0, f64::max);
        let lowest = chart
            .buckets
            .iter()
            .map(|b| b.p50_ms)
            .fold(1.0, f64::min)
            .max(0.001);
        let top = 10f64.powf(highest.log10().ceil());
        let bottom = 10f64.powf(lowest.log10().floor());
        let mut plot = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{}: latency of GET / per 100 ms, {} connections, {} restarts (red)",
                    phase.protocol, results.settings.connections, phase.restarts.count
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..chart.seconds.max(1.0), (bottom..top).log_scale())?;
        plot.configure_mesh()
            // A log axis draws a light line per unit step, which crowds the chart.
            .light_line_style(WHITE)
            .y_label_formatter(&|ms| format!("{ms}"))
            .x_desc("seconds")
            .y_desc("latency, ms")
            .draw()?;
        for (index, t) in chart.restarts.iter().enumerate() {
            let line =
                plot.draw_series(LineSeries::new([(*t, bottom), (*t, top)], RED.mix(0.35)))?;
            if index == 0 {
                line.label("SIGUSR2")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
            }
        }
        let series: [Line; 3] = [
            ("max", RGBColor(150, 150, 150), |b| b.max_ms),
            ("p99", RGBColor(230, 140, 20), |b| b.p99_ms),
            ("p50", RGBColor(30, 90, 200), |b| b.p50_ms),
        ];
        for (name, color, value) in series {
            plot.draw_series(LineSeries::new(
                chart.buckets.iter().map(|b| (b.t, value(b))),
                color.stroke_width(1),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        plot.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// One count per 100 ms bucket for each server, restarts as thin lines in its colour.
fn counts(
    panel: &plotters::prelude::DrawingArea<
        plotters::prelude::SVGBackend<'_>,
        plotters::coord::Shift,
    >,
    runs: &[ClientRun],
    title: &str,
    value: fn(&CountBucket) -> u64,
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let colors = [
        RGBColor(30, 90, 200),
        RGBColor(230, 140, 20),
        RGBColor(200, 30, 30),
    ];
    let seconds = runs.iter().map(|r| r.seconds).fold(1.0, f64::max);
    let top = runs
        .iter()
        .flat_map(|r| r.buckets.iter().map(value))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let mut plot = ChartBuilder::on(panel)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..top)?;
    plot.configure_mesh()
        .light_line_style(WHITE)
        .x_desc("seconds since the load started")
        .y_desc("requests")
        .draw()?;
    for (run, color) in runs.iter().zip(colors) {
        for t in &run.restart_times {
            plot.draw_series(LineSeries::new([(*t, 0.0), (*t, top)], color.mix(0.25)))?;
        }
        plot.draw_series(LineSeries::new(
            run.buckets.iter().map(|b| (b.t, value(b) as f64)),
            color.stroke_width(1),
        ))?
        .label(format!("{} ({} failed)", run.name, run.failed))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
