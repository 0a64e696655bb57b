//! The latency percentile spectrum as an SVG file: latency (y) against percentile (x) on a
//! log-scaled "nines" axis, HdrHistogram style, one curve per run, so two configurations can be
//! compared tail to tail.
//!
//! SVG is text; writing it directly keeps the load generator free of font and raster
//! dependencies. Each run is one `<polyline class="curve">` carrying its label.

use std::fmt::Write as _;

use super::report::{fmt_us, RunResult};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;
/// Highest percentile plotted (the axis cannot reach 100).
const MAX_PERCENTILE: f64 = 99.9999;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn nines(percentile: f64) -> f64 {
    // 0 % → 0, 90 % → 1, 99 % → 2, …
    let p = percentile.clamp(0.0, MAX_PERCENTILE) / 100.0;
    -(1.0 - p).log10()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about `ticks` ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Renders the runs' percentile spectra.
pub fn render(runs: &[RunResult], title: &str) -> String {
    let x_max = runs
        .iter()
        .flat_map(|r| r.spectrum.iter().map(|(p, _)| nines(*p)))
        .fold(2.0f64, f64::max)
        .ceil();
    let y_top = runs
        .iter()
        .flat_map(|r| r.spectrum.iter().map(|(_, l)| *l))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let step = nice_step(y_top, 6.0);
    let y_max = (y_top / step).ceil() * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |n: f64| LEFT + n / x_max * plot_w;
    let y = |us: f64| TOP + plot_h - us / y_max * plot_h;

    let mut s = String::with_capacity(32 << 10);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    let mut tick = 0.0;
    while tick <= y_max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#e0e0e0"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(tick),
            WIDTH - RIGHT,
            LEFT - 8.0,
            y(tick) + 4.0,
            fmt_us(tick)
        );
        tick += step;
    }
    for n in 0..=(x_max as usize) {
        let label = match n {
            0 => "0%".to_string(),
            n => format!("{}%", 100.0 - 100.0 / 10f64.powi(n as i32)),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#e0e0e0"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(n as f64),
            TOP + plot_h,
            TOP + plot_h + 18.0,
            label
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">latency</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Curves and legend.
    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = run
            .spectrum
            .iter()
            .map(|(p, l)| format!("{:.1},{:.1}", x(nines(*p)), y(*l)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="curve" data-label="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            escape(&run.label),
            points.join(" ")
        );
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="{color}" stroke-width="3"/><text x="{3}" y="{4:.1}">{5}</text>"#,
            LEFT + 12.0,
            ly,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(&format!(
                "{}: {:.0} req/s, p50 {}, p99 {}",
                run.label,
                run.throughput,
                fmt_us(run.latency_us.p50),
                fmt_us(run.latency_us.p99)
            ))
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_map_percentiles_to_decades() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(100.0).is_finite());
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(1000.0, 6.0), 200.0);
        assert_eq!(nice_step(95.0, 6.0), 20.0);
        assert_eq!(nice_step(7.0, 6.0), 2.0);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
