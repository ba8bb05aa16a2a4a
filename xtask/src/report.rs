//! Where the benches leave their raw figures: CSV of every sample and SVG charts of the curves and
//! latency distributions, under `target/bench/<bench>/`, so a reader sees the shape of a result and
//! can redo the arithmetic behind a table. The README links copies of the charts in docs/bench/.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// One bench's output folder.
pub(crate) struct BenchOut {
    dir: PathBuf,
}

/// Titles and axes of a chart. A log axis is drawn as log10 of the values with labels in the
/// values' own units (1, 10, 100, ...), so curves over decades of input stay readable.
pub(crate) struct Chart {
    pub(crate) title: String,
    pub(crate) x_label: String,
    pub(crate) y_label: String,
    pub(crate) log_x: bool,
    pub(crate) log_y: bool,
}

/// A named curve: (x, y) points, drawn in x order with a marker on each point.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A named set of samples (latencies), drawn as its empirical distribution function.
pub(crate) struct Samples {
    pub(crate) name: String,
    pub(crate) values: Vec<f64>,
}

const SIZE: (u32, u32) = (900, 560);

impl BenchOut {
    /// Creates `target/bench/<bench>/` (kept between runs: files are overwritten by name).
    pub(crate) fn new(bench: &str) -> Result<Self> {
        let dir = crate::cmd::workspace_root()
            .join("target/bench")
            .join(bench);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The folder, for the bench's closing line.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `<name>.csv`: the header, then one line per row (fields quoted where needed).
    pub(crate) fn csv(&self, name: &str, header: &[&str], rows: &[Vec<String>]) -> Result<PathBuf> {
        let mut text = String::new();
        line(&mut text, header.iter().copied());
        for (i, row) in rows.iter().enumerate() {
            if row.len() != header.len() {
                bail!(
                    "{name}.csv row {i} has {} fields, the header {}",
                    row.len(),
                    header.len()
                );
            }
            line(&mut text, row.iter().map(String::as_str));
        }
        let path = self.dir.join(format!("{name}.csv"));
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Draws `<name>.svg`: one line with point markers per series.
    pub(crate) fn curves(&self, name: &str, chart: &Chart, series: &[Series]) -> Result<PathBuf> {
        let drawn: Vec<(String, Vec<(f64, f64)>)> = series
            .iter()
            .map(|s| {
                let mut points: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter_map(|&(x, y)| Some((axis(x, chart.log_x)?, axis(y, chart.log_y)?)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                (s.name.clone(), points)
            })
            .collect();
        self.draw(name, chart, &drawn, true)
    }

    /// Draws `<name>.svg`: the fraction of samples (percent) at or below each value, per series.
    pub(crate) fn distribution(
        &self,
        name: &str,
        chart: &Chart,
        series: &[Samples],
    ) -> Result<PathBuf> {
        let drawn: Vec<(String, Vec<(f64, f64)>)> = series
            .iter()
            .map(|s| {
                let mut values: Vec<f64> = s
                    .values
                    .iter()
                    .filter_map(|&v| axis(v, chart.log_x))
                    .collect();
                values.sort_by(f64::total_cmp);
                let n = values.len() as f64;
                let points = values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (v, (i as f64 + 1.0) * 100.0 / n))
                    .collect();
                (s.name.clone(), points)
            })
            .collect();
        let chart = Chart {
            title: chart.title.clone(),
            x_label: chart.x_label.clone(),
            y_label: chart.y_label.clone(),
            log_x: chart.log_x,
            log_y: false,
        };
        self.draw(name, &chart, &drawn, false)
    }

    fn draw(
        &self,
        name: &str,
        chart: &Chart,
        series: &[(String, Vec<(f64, f64)>)],
        markers: bool,
    ) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.svg"));
        let (x_range, y_range) =
            ranges(series).with_context(|| format!("{name}.svg: no points"))?;
        let root = SVGBackend::new(&path, SIZE).into_drawing_area();
        let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("draw {}: {e}", path.display());
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        // On a log axis, one label per decade (plotters would otherwise put some at 10^0.5).
        let labels = |range: &std::ops::Range<f64>, log: bool| {
            if log {
                ((range.end - range.start).ceil() as usize + 1).clamp(2, 12)
            } else {
                10
            }
        };
        let (x_labels, y_labels) = (labels(&x_range, chart.log_x), labels(&y_range, chart.log_y));
        let mut ctx = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| failed(&e))?;
        let (log_x, log_y) = (chart.log_x, chart.log_y);
        ctx.configure_mesh()
            .x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .x_labels(x_labels)
            .y_labels(y_labels)
            .x_label_formatter(&|v| tick(*v, log_x))
            .y_label_formatter(&|v| tick(*v, log_y))
            .draw()
            .map_err(|e| failed(&e))?;
        for (i, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            ctx.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            if markers {
                ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| failed(&e))?;
            }
        }
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
        // The backend borrows the path until it is dropped at the end of this function.
        Ok(path.clone())
    }
}

/// A value on its axis: log10 on a log axis (None for values a log axis cannot show).
fn axis(v: f64, log: bool) -> Option<f64> {
    match (log, v.is_finite()) {
        (_, false) => None,
        (true, _) if v <= 0.0 => None,
        (true, _) => Some(v.log10()),
        (false, _) => Some(v),
    }
}

/// A tick label in the values' units.
fn tick(v: f64, log: bool) -> String {
    let v = if log { 10f64.powf(v) } else { v };
    let a = v.abs();
    if a >= 1e6 || (a > 0.0 && a < 1e-3) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The drawn ranges: every point inside, 5 % of margin, never an empty range.
fn ranges(
    series: &[(String, Vec<(f64, f64)>)],
) -> Option<(std::ops::Range<f64>, std::ops::Range<f64>)> {
    let mut points = series.iter().flat_map(|(_, p)| p.iter());
    let &(x, y) = points.next()?;
    let (mut x0, mut x1, mut y0, mut y1) = (x, x, y, y);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = |lo: f64, hi: f64| {
        let m = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.05
        };
        (lo - m)..(hi + m)
    };
    Some((pad(x0, x1), pad(y0, y1)))
}

/// One CSV line; a field holding a comma, quote or newline is quoted with quotes doubled.
fn line<'a>(text: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            text.push(',');
        }
        if field.contains([',', '"', '\n', '\r']) {
            text.push('"');
            text.push_str(&field.replace('"', "\"\""));
            text.push('"');
        } else {
            text.push_str(field);
        }
    }
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_and_quotes_are_quoted() {
        let mut text = String::new();
        line(&mut text, ["a", "b,c", "say \"hi\""].into_iter());
        assert_eq!(text, "a,\"b,c\",\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn a_log_axis_drops_what_it_cannot_show() {
        assert_eq!(axis(100.0, true), Some(2.0));
        assert_eq!(axis(0.0, true), None);
        assert_eq!(axis(f64::NAN, false), None);
        assert_eq!(tick(3.0, true), "1000");
    }

    #[test]
    fn charts_and_csv_are_written() {
        let out = BenchOut::new("report-selftest").expect("bench dir");
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: true,
            log_y: false,
        };
        let curve = out
            .curves(
                "curve",
                &chart,
                &[Series {
                    name: "linear".into(),
                    points: vec![(10.0, 1.0), (100.0, 10.0), (1000.0, 100.0)],
                }],
            )
            .expect("curve");
        let svg = fs::read_to_string(&curve).expect("svg");
        assert!(svg.contains("<svg") && svg.contains("linear"), "{svg}");
        let cdf = out
            .distribution(
                "cdf",
                &chart,
                &[Samples {
                    name: "latency".into(),
                    values: vec![1.0, 2.0, 3.0],
                }],
            )
            .expect("cdf");
        assert!(fs::read_to_string(cdf).expect("svg").contains("latency"));
        let csv = out
            .csv("rows", &["a", "b"], &[vec!["1".into(), "2".into()]])
            .expect("csv");
        assert_eq!(fs::read_to_string(csv).expect("csv"), "a,b\n1,2\n");
        assert!(out.csv("bad", &["a"], &[vec![]]).is_err());
        fs::remove_dir_all(out.dir()).expect("clean up");
    }
}
