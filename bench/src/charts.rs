//! SVG charts a person can look at: throughput over time and the latency distribution.
//! Plain SVG written by hand (no plotting dependency); one polyline per series.

use crate::load::{Percentiles, Report, CURVE_QUANTILES};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 80.0;

/// Writes `PREFIX-throughput.svg` and `PREFIX-latency.svg` for a report.
pub fn write(prefix: &str, report: &Report) -> std::io::Result<()> {
    std::fs::write(
        format!("{prefix}-throughput.svg"),
        throughput(&report.per_second_mb),
    )?;
    let mut series = vec![("publish", &report.publish_us)];
    if let Some(e2e) = &report.e2e_us {
        series.push(("end-to-end", e2e));
    }
    std::fs::write(format!("{prefix}-latency.svg"), latency(&series))
}

fn frame(title: &str, x_label: &str, y_label: &str, body: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{MARGIN}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n\
         <text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">{y_label}</text>\n{body}</svg>\n",
        WIDTH / 2.0,
        WIDTH / 2.0,
        HEIGHT - 15.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        b = HEIGHT - MARGIN,
        r = WIDTH - 20.0,
    )
}

fn polyline(points: &[(f64, f64)], color: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
        pts.join(" ")
    )
}

fn y_axis(max: f64, unit: &str) -> String {
    (0..=4)
        .map(|i| {
            let v = max * f64::from(i) / 4.0;
            let y = HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * f64::from(i) / 4.0;
            format!(
                "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{v:.1}{unit}</text>\n",
                MARGIN - 4.0
            )
        })
        .collect()
}

/// Acknowledged MB per second over the measured window.
pub fn throughput(per_second_mb: &[f64]) -> String {
    let max = per_second_mb.iter().copied().fold(1.0, f64::max) * 1.1;
    let n = per_second_mb.len().max(2) as f64 - 1.0;
    let points: Vec<(f64, f64)> = per_second_mb
        .iter()
        .enumerate()
        .map(|(i, mb)| {
            let x = MARGIN + (WIDTH - MARGIN - 20.0) * i as f64 / n;
            let y = HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * mb / max;
            (x, y)
        })
        .collect();
    let body = y_axis(max, "") + &polyline(&points, "#1f77b4");
    frame("Throughput (acknowledged MB/s)", "seconds", "MB/s", &body)
}

/// Latency against percentile on a "nines" axis (50, 90, 99, 99.9, 99.99, max).
pub fn latency(series: &[(&str, &Percentiles)]) -> String {
    let max_us = series.iter().map(|(_, p)| p.max).max().unwrap_or(1).max(1) as f64 * 1.1;
    let nines = |q: f64| -(1.0 - q.min(0.99999)).log10(); // 0.5 → 0.3, 0.99 → 2, 0.9999 → 4
    let x_max = nines(1.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c"];
    let mut body = y_axis(max_us / 1000.0, " ms");
    for q in [0.5, 0.9, 0.99, 0.999, 0.9999] {
        let x = MARGIN + (WIDTH - MARGIN - 20.0) * nines(q) / x_max;
        body.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">p{}</text>\n",
            HEIGHT - MARGIN + 16.0,
            q * 100.0
        ));
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = CURVE_QUANTILES
            .iter()
            .zip(p.curve.iter())
            .map(|(q, us)| {
                let x = MARGIN + (WIDTH - MARGIN - 20.0) * nines(*q) / x_max;
                let y = HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * (*us as f64) / max_us;
                (x, y)
            })
            .collect();
        let color = colors[i % colors.len()];
        body.push_str(&polyline(&points, color));
        body.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            MARGIN + 10.0,
            MARGIN + 16.0 * (i as f64 + 1.0)
        ));
    }
    frame("Latency by percentile", "percentile", "latency", &body)
}
