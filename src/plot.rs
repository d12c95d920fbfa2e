//! Accuracy-against-cost plots of the routes (PNG or SVG), drawn as the official
//! `visualize_stitches.py` draws them: every route a point whose size grows with its parameters,
//! the anchors as labelled stars, plus the Pareto frontier as a line; or several networks' routes
//! and frontiers in one figure ([`ComparisonPlot`]); requests served over time under a latency
//! target ([`ServingPlot`]); and learning curves, a line per model ([`CurvePlot`]).
//!
//! Text is rendered with DejaVu Sans, embedded in the binary (`assets/fonts/`, Bitstream Vera
//! licence), so PNGs come out the same on machines without fonts.

use std::path::Path;

use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::{register_font, FontStyle},
};

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// One route on the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotRoute {
    /// Route id.
    pub cfg_id: usize,
    /// Cost (x axis), e.g. GFLOPs.
    pub x: f64,
    /// Quality (y axis), e.g. top-1 accuracy.
    pub y: f64,
    /// Marker size measure, e.g. parameters in millions.
    pub size: f64,
    /// The anchor's name when the route is a plain anchor.
    pub anchor: Option<String>,
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct FrontierPlot<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x-axis label, e.g. `FLOPs (G)`.
    pub x_label: &'a str,
    /// y-axis label, e.g. `Top-1 (%)`.
    pub y_label: &'a str,
    /// Every route.
    pub routes: &'a [PlotRoute],
    /// Route ids on the frontier, in x order.
    pub frontier: &'a [usize],
}

/// One network's routes in a [`ComparisonPlot`].
#[derive(Clone, Debug)]
pub struct PlotSeries<'a> {
    /// Legend name, e.g. `SN-Net (v1)`.
    pub name: &'a str,
    /// Its routes.
    pub routes: &'a [PlotRoute],
    /// Its frontier's route ids, in x order.
    pub frontier: &'a [usize],
}

/// Several networks' routes and frontiers on one pair of axes, each in its own colour (e.g. the
/// one-way and the two-way SN-Net of the same anchors); anchors are drawn once.
#[derive(Clone, Debug)]
pub struct ComparisonPlot<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// x-axis label.
    pub x_label: &'a str,
    /// y-axis label.
    pub y_label: &'a str,
    /// The networks.
    pub series: &'a [PlotSeries<'a>],
}

/// A plot that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file name ends in neither `.png` nor `.svg`.
    #[error("plot file {0}: the name must end in .png or .svg")]
    Extension(String),
    /// Nothing finite to draw.
    #[error("plot file {0}: no route has finite values to draw")]
    Empty(String),
    /// The drawing backend failed (e.g. the folder does not exist).
    #[error("plot file {path}: {reason}")]
    Draw {
        /// The file.
        path: String,
        /// What the backend reported.
        reason: String,
    },
}

/// Writes `plot` to `path` (PNG or SVG by extension), 900×600 pixels.
pub fn write_frontier_plot(plot: &FrontierPlot<'_>, path: &Path) -> Result<(), PlotError> {
    let series = [PlotSeries { name: "stitched routes (size ∝ parameters)", routes: plot.routes, frontier: plot.frontier }];
    write_comparison_plot(&ComparisonPlot { title: plot.title, x_label: plot.x_label, y_label: plot.y_label, series: &series }, path)
}

/// Colours of the series, in order (a single series is blue, as before comparisons existed).
const SERIES_COLOURS: [RGBColor; 4] = [RGBColor(55, 110, 180), RGBColor(200, 60, 60), RGBColor(60, 150, 80), RGBColor(130, 80, 170)];

/// Writes `plot` to `path` (PNG or SVG by extension), 900×600 pixels.
pub fn write_comparison_plot(plot: &ComparisonPlot<'_>, path: &Path) -> Result<(), PlotError> {
    let finite: Vec<Vec<&PlotRoute>> =
        plot.series.iter().map(|s| s.routes.iter().filter(|r| r.x.is_finite() && r.y.is_finite()).collect()).collect();
    if finite.iter().all(Vec::is_empty) {
        return Err(PlotError::Empty(path.display().to_string()));
    }
    render(&Comparison { plot, finite: &finite }, path, (900, 600))
}

/// A figure that draws itself on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `figure` into `path`, a PNG or an SVG by its extension, of `size` pixels.
fn render(figure: &impl Figure, path: &Path, size: (u32, u32)) -> Result<(), PlotError> {
    let shown = path.display().to_string();
    // Registering the same font again is harmless; the first call wins.
    let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    let err = |e: String| PlotError::Draw { path: shown.clone(), reason: e };
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => figure.draw(BitMapBackend::new(path, size).into_drawing_area()).map_err(err),
        Some("svg") => figure.draw(SVGBackend::new(path, size).into_drawing_area()).map_err(err),
        _ => Err(PlotError::Extension(shown)),
    }
}

/// A [`ComparisonPlot`] with its finite routes.
struct Comparison<'a> {
    plot: &'a ComparisonPlot<'a>,
    finite: &'a [Vec<&'a PlotRoute>],
}

impl Figure for Comparison<'_> {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw(area, self.plot, self.finite)
    }
}

impl Figure for ServingPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_serving(area, self)
    }
}

fn draw<DB: DrawingBackend>(area: DrawingArea<DB, Shift>, plot: &ComparisonPlot<'_>, finite: &[Vec<&PlotRoute>]) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(e)?;
    let all: Vec<&PlotRoute> = finite.iter().flatten().copied().collect();
    let (x0, x1) = padded(all.iter().map(|r| r.x));
    let (y0, y1) = padded(all.iter().map(|r| r.y));
    let mut chart = chart(&area, plot.title, (plot.x_label, plot.y_label), (x0, x1), (y0, y1))?;

    let (s_min, s_max) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| (a.min(r.size), b.max(r.size)));
    let radius = |s: f64| if s_max > s_min { 3.0 + 5.0 * (s - s_min) / (s_max - s_min) } else { 5.0 };
    let single = plot.series.len() == 1;
    for (n, (s, routes)) in plot.series.iter().zip(finite).enumerate() {
        let colour = SERIES_COLOURS[n % SERIES_COLOURS.len()];
        chart
            .draw_series(
                routes
                    .iter()
                    .filter(|r| r.anchor.is_none())
                    .map(|r| Circle::new((r.x, r.y), radius(r.size) as i32, colour.mix(0.55).filled())),
            )
            .map_err(e)?
            .label(s.name)
            .legend(move |(x, y)| Circle::new((x, y), 5, colour.mix(0.55).filled()));
        let frontier: Vec<(f64, f64)> =
            s.frontier.iter().filter_map(|id| routes.iter().find(|r| r.cfg_id == *id)).map(|r| (r.x, r.y)).collect();
        // One network: the frontier in dark grey; several: each in its network's colour.
        let line = if single { RGBColor(60, 60, 60) } else { colour };
        let label = if single { "Pareto frontier".to_string() } else { format!("{}: Pareto frontier", s.name) };
        chart
            .draw_series(LineSeries::new(frontier, line.stroke_width(2)))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x - 10, y), (x + 10, y)], line.stroke_width(2)));
    }

    let orange = RGBColor(240, 140, 30);
    let mut anchors: Vec<&PlotRoute> = Vec::new();
    for r in all.iter().filter(|r| r.anchor.is_some()) {
        if !anchors.iter().any(|a| a.anchor == r.anchor && a.x == r.x && a.y == r.y) {
            anchors.push(r);
        }
    }
    chart
        .draw_series(anchors.iter().enumerate().map(|(n, r)| {
            let label = r.anchor.clone().unwrap_or_default();
            // Labels of anchors in the right part of the plot go to the left of their star; of
            // two anchors drawn at nearly the same cost (one per network), the lower one's label
            // goes below its star.
            let dx = if (r.x - x0) / (x1 - x0) > 0.6 { -10 - 8 * label.chars().count() as i32 } else { 10 };
            let below = anchors.iter().enumerate().any(|(m, a)| m != n && ((a.x - r.x) / (x1 - x0)).abs() < 0.02 && a.y > r.y);
            let dy = if below { 6 } else { -18 };
            EmptyElement::at((r.x, r.y)) + star(10, orange) + Text::new(label, (dx, dy), ("sans-serif", 14).into_font())
        }))
        .map_err(e)?
        .label("anchors")
        .legend(move |(x, y)| EmptyElement::at((x, y)) + star(7, orange));

    legend(&mut chart, SeriesLabelPosition::LowerRight, 14)?;
    area.present().map_err(e)
}

/// A chart filling `area` with the figures' common look: a title, axis descriptions `labels`
/// (x, y) and a light grid over the ranges `x` and `y`; whole-number ticks print without decimals.
fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    labels: (&str, &str),
    x: (f64, f64),
    y: (f64, f64),
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(e)?;
    let tick = |v: &f64| if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v}") };
    chart
        .configure_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        .x_label_formatter(&tick)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// Draws the legend of `chart`'s labelled series at `position`, in `font_size`-point text.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// One policy's requests in a [`ServingPlot`]: `(seconds since the start, latency in ms)`.
#[derive(Clone, Debug)]
pub struct ServingSeries<'a> {
    /// Legend name, e.g. `controller` or `route 34 fixed`.
    pub name: &'a str,
    /// Its requests, in time order.
    pub requests: &'a [(f64, f64)],
}

/// Requests served over time under a latency target: above, each policy's per-request latency
/// with the target and the periods of added load shaded; below, the quality of the route the
/// first policy (the controller) served, over the same time.
#[derive(Clone, Debug)]
pub struct ServingPlot<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// The policies; the first is drawn on top and its routes below.
    pub series: &'a [ServingSeries<'a>],
    /// The latency target, ms.
    pub target_ms: f64,
    /// Label of the target line, e.g. `target: p95 ≤ 6.2 ms`.
    pub target_label: &'a str,
    /// `(seconds, quality)` of the route the first policy served at each request.
    pub route_quality: &'a [(f64, f64)],
    /// Label of the quality axis, e.g. `top-1 of the route (%)`.
    pub quality_label: &'a str,
    /// Periods `[start, end)` in seconds when load was added.
    pub loaded: &'a [(f64, f64)],
}

/// Writes `plot` to `path` (PNG or SVG by extension), 1000×700 pixels.
pub fn write_serving_plot(plot: &ServingPlot<'_>, path: &Path) -> Result<(), PlotError> {
    if plot.series.iter().all(|s| s.requests.is_empty()) {
        return Err(PlotError::Empty(path.display().to_string()));
    }
    render(plot, path, (1000, 700))
}

fn draw_serving<DB: DrawingBackend>(area: DrawingArea<DB, Shift>, plot: &ServingPlot<'_>) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(e)?;
    let area = area.titled(plot.title, ("sans-serif", 22)).map_err(e)?;
    let (top, bottom) = area.split_vertically(area.dim_in_pixel().1 * 2 / 3);
    let all = || plot.series.iter().flat_map(|s| s.requests.iter());
    let t1 = all().map(|r| r.0).fold(0.0, f64::max).max(1e-3);
    // Latency up to the 99th percentile of every request (or 1.5 × the target): rare stalls do not
    // flatten the rest.
    let mut latencies: Vec<f64> = all().map(|r| r.1).filter(|v| v.is_finite()).collect();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies.get(latencies.len() * 99 / 100).copied().unwrap_or(plot.target_ms);
    let y1 = p99.max(plot.target_ms * 1.5);
    let mut chart =
        ChartBuilder::on(&top).margin(12).x_label_area_size(30).y_label_area_size(56).build_cartesian_2d(0.0..t1, 0.0..y1).map_err(e)?;
    chart
        .configure_mesh()
        .y_desc("latency per request (ms)")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    let shade = RGBColor(250, 225, 190);
    chart
        .draw_series(plot.loaded.iter().map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y1)], shade.mix(0.6).filled())))
        .map_err(e)?
        .label("added CPU load")
        .legend(move |(x, y)| Rectangle::new([(x - 8, y - 5), (x + 8, y + 5)], shade.filled()));
    // The first series last, so it is drawn on top.
    for (n, s) in plot.series.iter().enumerate().rev() {
        let colour = SERIES_COLOURS[n % SERIES_COLOURS.len()];
        let (radius, alpha) = if n == 0 { (2, 0.9) } else { (1, 0.45) };
        chart
            .draw_series(s.requests.iter().map(|&(t, ms)| Circle::new((t, ms.min(y1)), radius, colour.mix(alpha).filled())))
            .map_err(e)?
            .label(s.name)
            .legend(move |(x, y)| Circle::new((x, y), 4, colour.filled()));
    }
    let target = plot.target_ms;
    chart
        .draw_series(LineSeries::new([(0.0, target), (t1, target)], BLACK.stroke_width(2)))
        .map_err(e)?
        .label(plot.target_label)
        .legend(|(x, y)| PathElement::new(vec![(x - 10, y), (x + 10, y)], BLACK.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;

    let (q0, q1) = padded(plot.route_quality.iter().map(|r| r.1));
    let mut routes =
        ChartBuilder::on(&bottom).margin(12).x_label_area_size(40).y_label_area_size(56).build_cartesian_2d(0.0..t1, q0..q1).map_err(e)?;
    routes
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(plot.quality_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    routes.draw_series(plot.loaded.iter().map(|&(a, b)| Rectangle::new([(a, q0), (b, q1)], shade.mix(0.6).filled()))).map_err(e)?;
    routes.draw_series(LineSeries::new(plot.route_quality.iter().copied(), SERIES_COLOURS[0].stroke_width(2))).map_err(e)?;
    area.present().map_err(e)
}

/// One model's curve in a [`CurvePlot`]: `(x, y)` points in drawing order.
#[derive(Clone, Debug)]
pub struct CurveSeries<'a> {
    /// Legend name.
    pub name: &'a str,
    /// The points, e.g. `(epoch, top-1)`.
    pub points: &'a [(f64, f64)],
}

/// Lines with markers, one per series: e.g. test accuracy after each epoch of several models.
#[derive(Clone, Debug)]
pub struct CurvePlot<'a> {
    /// Figure title.
    pub title: &'a str,
    /// X-axis label.
    pub x_label: &'a str,
    /// Y-axis label.
    pub y_label: &'a str,
    /// The curves.
    pub series: &'a [CurveSeries<'a>],
}

/// Writes `plot` to `path` (PNG or SVG by extension), 900×600 pixels.
pub fn write_curve_plot(plot: &CurvePlot<'_>, path: &Path) -> Result<(), PlotError> {
    if !plot.series.iter().flat_map(|s| s.points).any(|(x, y)| x.is_finite() && y.is_finite()) {
        return Err(PlotError::Empty(path.display().to_string()));
    }
    render(plot, path, (900, 600))
}

impl Figure for CurvePlot<'_> {
    fn draw<DB: DrawingBackend>(&self, area: DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        area.fill(&WHITE).map_err(e)?;
        let finite: Vec<Vec<(f64, f64)>> =
            self.series.iter().map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()).collect();
        let (x0, x1) = padded(finite.iter().flatten().map(|p| p.0));
        let (y0, y1) = padded(finite.iter().flatten().map(|p| p.1));
        let mut chart = chart(&area, self.title, (self.x_label, self.y_label), (x0, x1), (y0, y1))?;
        for (n, (s, points)) in self.series.iter().zip(&finite).enumerate() {
            let colour = SERIES_COLOURS[n % SERIES_COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)).point_size(3))
                .map_err(e)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x - 10, y), (x + 10, y)], colour.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, 14)?;
        area.present().map_err(e)
    }
}

/// A filled five-pointed star of outer radius `r` pixels, centred on the element's anchor point.
fn star(r: i32, colour: RGBColor) -> Polygon<(i32, i32)> {
    let points = (0..10)
        .map(|i| {
            let radius = if i % 2 == 0 { r as f64 } else { r as f64 * 0.45 };
            let angle = std::f64::consts::PI * (i as f64 / 5.0) - std::f64::consts::FRAC_PI_2;
            ((radius * angle.cos()).round() as i32, (radius * angle.sin()).round() as i32)
        })
        .collect::<Vec<_>>();
    Polygon::new(points, colour.filled())
}

/// The range of `values` widened by 5 % on each side (1 unit when all are equal).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    (lo - pad, hi + pad)
}
