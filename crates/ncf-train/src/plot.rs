//! Training curves as a self-contained SVG: loss, HR@K and NDCG@K by epoch (validation and
//! test), one panel each. Hand-written SVG keeps the dependency list short; any browser opens it.

use crate::EpochReport;
use std::fmt::Write;

const W: f64 = 300.0;
const H: f64 = 220.0;
const PAD: f64 = 40.0;

/// A line: its legend, its colour and its (epoch, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One panel: a title and its lines.
fn panel(out: &mut String, x0: f64, title: &str, series: &[Series]) {
    panel_x(out, x0, title, "epoch", series)
}

/// [`panel`] with `xlabel` under the x axis (whose range starts at the smallest x, or 1).
fn panel_x(out: &mut String, x0: f64, title: &str, xlabel: &str, series: &[Series]) {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    if pts.is_empty() {
        return;
    }
    let xmin = pts.iter().map(|p| p.0).fold(1.0, f64::min);
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max).max(xmin + 1.0);
    let (mut ymin, mut ymax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if ymax - ymin < 1e-9 {
        ymin -= 0.5;
        ymax += 0.5;
    }
    let sx = |x: f64| x0 + PAD + (x - xmin) / (xmax - xmin) * (W - 1.5 * PAD);
    let sy = |y: f64| H - PAD + (ymin - y) / (ymax - ymin) * (H - 2.0 * PAD);
    let _ = write!(out, r##"<text x="{}" y="20" font-size="14" text-anchor="middle">{title}</text>"##, x0 + W / 2.0);
    let _ = write!(
        out,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        x0 + PAD,
        PAD,
        W - 1.5 * PAD,
        H - 2.0 * PAD
    );
    for (v, anchor_y) in [(ymin, sy(ymin)), (ymax, sy(ymax))] {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{v:.3}</text>"##,
            x0 + PAD - 3.0,
            anchor_y + 3.0
        );
    }
    for v in [xmin, xmax] {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{v}</text>"##,
            sx(v),
            H - PAD + 14.0
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{xlabel}</text>"##,
        x0 + W / 2.0,
        H - 8.0
    );
    for (k, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ =
            write!(out, r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##, path.join(" "));
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="10" fill="{color}">{name}</text>"##,
            x0 + PAD + 6.0,
            PAD + 12.0 + 12.0 * k as f64
        );
    }
}

/// The SVG document for a run's epochs.
pub fn training_curves_svg(reports: &[EpochReport], k: usize) -> String {
    let ser = |f: fn(&EpochReport) -> f64| reports.iter().map(|r| (r.epoch as f64, f(r))).collect::<Vec<_>>();
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" font-family="sans-serif">"##,
        3.0 * W
    );
    panel(&mut out, 0.0, "training loss (BCE)", &[("loss", "#444", ser(|r| r.loss))]);
    panel(
        &mut out,
        W,
        &format!("HR@{k}"),
        &[("validation", "#1f77b4", ser(|r| r.valid_hr)), ("test", "#d62728", ser(|r| r.test_hr))],
    );
    panel(
        &mut out,
        2.0 * W,
        &format!("NDCG@{k}"),
        &[("validation", "#1f77b4", ser(|r| r.valid_ndcg)), ("test", "#d62728", ser(|r| r.test_ndcg))],
    );
    out.push_str("</svg>\n");
    out
}

/// The rating model's run as an SVG: training MSE, RMSE and MAE by epoch (validation and test),
/// and the selected epoch's test residuals by true rating (mean error and RMSE).
pub fn rating_curves_svg(reports: &[crate::ratings::RatingEpoch], res: &crate::ratings::Residuals) -> String {
    use crate::ratings::RatingEpoch;
    let ser = |f: fn(&RatingEpoch) -> f64| reports.iter().map(|r| (r.epoch as f64, f(r))).collect::<Vec<_>>();
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{H}" font-family="sans-serif">"##,
        4.0 * W
    );
    panel(&mut out, 0.0, "training loss (MSE)", &[("loss", "#444", ser(|r| r.loss))]);
    panel(
        &mut out,
        W,
        "RMSE",
        &[("validation", "#1f77b4", ser(|r| r.valid_rmse)), ("test", "#d62728", ser(|r| r.test_rmse))],
    );
    panel(
        &mut out,
        2.0 * W,
        "MAE",
        &[("validation", "#1f77b4", ser(|r| r.valid_mae)), ("test", "#d62728", ser(|r| r.test_mae))],
    );
    let by = |f: fn(&crate::ratings::Bucket) -> f64| {
        res.by_rating.iter().filter_map(|b| Some((b.label.parse::<f64>().ok()?, f(b)))).collect::<Vec<_>>()
    };
    panel_x(
        &mut out,
        3.0 * W,
        "test residuals by true rating",
        "true rating",
        &[("mean error (pred − true)", "#2ca02c", by(|b| b.mean_error)), ("RMSE", "#d62728", by(|b| b.rmse))],
    );
    out.push_str("</svg>\n");
    out
}
