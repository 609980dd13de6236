//! Minimal inline SVG line charts for the HTML report.

use std::fmt::Write as _;

use crate::report::esc;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 86.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 52.0;

/// An axis: its label, range, and ticks (position in axis units, label).
#[derive(Clone, Debug)]
pub struct Axis {
    pub label: String,
    pub min: f64,
    pub max: f64,
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis with about six round ticks.
    pub fn linear(label: &str, min: f64, max: f64) -> Axis {
        let max = if max > min { max } else { min + 1.0 };
        let ticks = nice_ticks(min, max, 6);
        let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
        let ticks = ticks.into_iter().map(|v| (v, format_tick(v, step))).collect();
        Axis { label: label.to_string(), min, max, ticks }
    }

    fn span(&self) -> f64 {
        if self.max > self.min { self.max - self.min } else { 1.0 }
    }
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str, color: &str, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.to_string(), color: color.to_string(), points }
    }
}

/// A moment marked on a chart: a dashed vertical line at `x` with a short label, and
/// optionally a shaded span from `x` to `until` (e.g. a kill and the time to recover from it).
#[derive(Clone, Debug)]
pub struct Marker {
    pub x: f64,
    pub until: Option<f64>,
    pub label: String,
    pub color: String,
}

/// Labels of markers closer than this (pixels) to the previous labelled one are left out.
const MARKER_LABEL_GAP: f64 = 18.0;

/// Round tick values covering `min..=max`: steps of 1, 2 or 5 times a power of ten, the one
/// nearest (in ratio) to `span / about`.
pub fn nice_ticks(min: f64, max: f64, about: usize) -> Vec<f64> {
    let span = (max - min).abs().max(f64::MIN_POSITIVE);
    let raw = span / about.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let distance = |s: f64| (s / raw).ln().abs();
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .min_by(|a, b| distance(*a).total_cmp(&distance(*b)))
        .unwrap_or(magnitude);
    let first = (min / step).ceil() as i64;
    let last = (max / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn format_tick(value: f64, step: f64) -> String {
    if step >= 1.0 || value == 0.0 {
        let v = value.round() as i64;
        if v.abs() >= 10_000 && v % 1000 == 0 { format!("{}k", v / 1000) } else { v.to_string() }
    } else {
        let decimals = (-step.log10()).ceil().clamp(1.0, 6.0) as usize;
        format!("{value:.decimals$}")
    }
}

/// A complete `<svg>` line chart with title, gridlines, labelled axes and a legend.
pub fn line_chart(id: &str, title: &str, x: &Axis, y: &Axis, series: &[Series]) -> String {
    marked_line_chart(id, title, x, y, series, &[])
}

/// [`line_chart`] with markers drawn behind the lines.
pub fn marked_line_chart(id: &str, title: &str, x: &Axis, y: &Axis, series: &[Series], markers: &[Marker]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |v: f64| LEFT + (v - x.min) / x.span() * plot_w;
    let py = |v: f64| TOP + plot_h - (v - y.min) / y.span() * plot_h;
    let mut s = String::with_capacity(8 * 1024);
    let _ = write!(
        s,
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\" font-family=\"sans-serif\" font-size=\"12\">\
         <title>{t}</title><rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>",
        t = esc(title)
    );
    let _ = write!(s, "<text x=\"{LEFT}\" y=\"22\" font-size=\"15\" font-weight=\"600\">{}</text>", esc(title));
    // Grid and ticks.
    for (value, label) in &y.ticks {
        let yy = py(*value);
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#d8dee4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">{}</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            esc(label)
        );
    }
    for (value, label) in &x.ticks {
        let xx = px(*value);
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#eaeef2\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
            TOP + plot_h,
            TOP + plot_h + 16.0,
            esc(label)
        );
    }
    // Frame and axis labels.
    let _ = write!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w:.1}\" height=\"{plot_h:.1}\" fill=\"none\" stroke=\"#57606a\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        esc(&x.label),
        TOP + plot_h / 2.0,
        esc(&y.label)
    );
    // Lines (clipped to the plot area).
    let _ = write!(
        s,
        "<clipPath id=\"{id}-clip\"><rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w:.1}\" height=\"{plot_h:.1}\"/></clipPath>\
         <g clip-path=\"url(#{id}-clip)\">"
    );
    draw_markers(&mut s, markers, &px, plot_h);
    for line in series {
        if line.points.is_empty() {
            continue;
        }
        let mut path = String::with_capacity(line.points.len() * 16);
        for (x_value, y_value) in &line.points {
            let _ = write!(path, "{:.1},{:.1} ", px(*x_value), py(*y_value));
        }
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"{}\"/>",
            esc(&line.color),
            path.trim_end()
        );
        if line.points.len() <= 60 {
            for (x_value, y_value) in &line.points {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>",
                    px(*x_value),
                    py(*y_value),
                    esc(&line.color)
                );
            }
        }
    }
    s.push_str("</g>");
    // Legend, top right.
    let mut lx = WIDTH - RIGHT;
    for line in series.iter().rev() {
        let text_w = 7.0 * line.name.chars().count() as f64;
        lx -= text_w + 30.0;
        let _ = write!(
            s,
            "<rect x=\"{lx:.1}\" y=\"14\" width=\"16\" height=\"4\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"20\">{}</text>",
            esc(&line.color),
            lx + 20.0,
            esc(&line.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Shaded spans first, then the lines and labels, so that no span hides a line.
fn draw_markers(s: &mut String, markers: &[Marker], px: &dyn Fn(f64) -> f64, plot_h: f64) {
    for marker in markers {
        if let Some(until) = marker.until {
            let (x0, x1) = (px(marker.x), px(until));
            let _ = write!(
                s,
                "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{plot_h:.1}\" fill=\"{}\" fill-opacity=\"0.12\"/>",
                (x1 - x0).max(1.0),
                esc(&marker.color)
            );
        }
    }
    let mut last_label = f64::MIN;
    for marker in markers {
        let xx = px(marker.x);
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"1.5\" \
             stroke-dasharray=\"4 3\"/>",
            TOP + plot_h,
            esc(&marker.color)
        );
        if xx - last_label >= MARKER_LABEL_GAP {
            last_label = xx;
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{}\">{}</text>",
                xx + 2.0,
                TOP + 11.0,
                esc(&marker.color),
                esc(&marker.label)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            nice_ticks(0.0, 123_000.0, 6),
            vec![0.0, 20_000.0, 40_000.0, 60_000.0, 80_000.0, 100_000.0, 120_000.0]
        );
        assert_eq!(format_tick(20_000.0, 20_000.0), "20k");
        assert_eq!(format_tick(0.5, 0.1), "0.5");
    }

    #[test]
    fn charts_have_axes_and_lines() {
        let x = Axis::linear("time (s)", 0.0, 10.0);
        let y = Axis::linear("tx/s", 0.0, 100.0);
        let svg = line_chart("c", "A <chart>", &x, &y, &[Series::new("s", "#000", vec![(0.0, 0.0), (10.0, 100.0)])]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("A &lt;chart&gt;"));
        assert!(svg.contains("points=\"86.0,308.0 936.0,40.0\""), "{svg}");
        assert!(svg.contains(">time (s)</text>") && svg.contains(">tx/s</text>"));
    }

    #[test]
    fn markers_draw_a_line_a_span_and_a_label() {
        let x = Axis::linear("time (s)", 0.0, 10.0);
        let y = Axis::linear("tx/s", 0.0, 100.0);
        let marker = |at: f64, label: &str| Marker {
            x: at,
            until: Some(at + 1.0),
            label: label.to_string(),
            color: "#d1242f".into(),
        };
        let svg = marked_line_chart("c", "t", &x, &y, &[], &[marker(5.0, "p<2>"), marker(5.1, "c1")]);
        assert!(svg.contains("<line x1=\"511.0\" x2=\"511.0\""), "{svg}");
        assert!(svg.contains("<rect x=\"511.0\" y=\"40\" width=\"85.0\""), "{svg}");
        assert!(svg.contains(">p&lt;2&gt;</text>"), "{svg}");
        assert!(!svg.contains(">c1</text>"), "a label too close to the previous one is left out");
    }
}
