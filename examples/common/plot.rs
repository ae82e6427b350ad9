//! The PNG of the demo: held-out accuracy and reward per step for each method, IEF acceptance
//! rate and γ(t) for ICPO.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::MethodResult;

/// Registers a TrueType font for labels; without one the plot is drawn without text.
fn font() -> bool {
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/Library/Fonts/Arial.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

pub fn draw(path: &Path, methods: &[MethodResult]) -> Result<()> {
    let text = font();
    let root = BitMapBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let colors = [BLUE, RED, GREEN];
    let steps = methods.iter().map(|m| m.metrics.len()).max().unwrap_or(1).max(1) as f64;
    let titles = ["held-out accuracy", "on-policy reward", "ICPO: IEF acceptance, gamma(t)"];
    for (k, panel) in panels.iter().enumerate() {
        let mut b = ChartBuilder::on(panel);
        b.margin(12).x_label_area_size(30).y_label_area_size(40);
        if text {
            b.caption(titles[k], ("sans-serif", 18));
        }
        let mut chart = b.build_cartesian_2d(0f64..steps, 0f64..1.05f64)?;
        if text {
            chart.configure_mesh().x_desc("step").draw()?;
        } else {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_y_mesh()
                .x_labels(0)
                .y_labels(0)
                .draw()?;
        }
        for (i, m) in methods.iter().enumerate() {
            let color = colors[i % colors.len()];
            let series: Vec<(f64, f64)> = match k {
                0 => m.curve.iter().map(|&(s, a)| (s as f64, a)).collect(),
                1 => m
                    .metrics
                    .iter()
                    .enumerate()
                    .map(|(s, x)| (s as f64 + 1.0, x["reward/on_policy_mean"]))
                    .collect(),
                _ if m.name != "GRPO" => m
                    .metrics
                    .iter()
                    .enumerate()
                    .filter_map(|(s, x)| Some((s as f64 + 1.0, *x.get("ief/acceptance_rate")?)))
                    .collect(),
                _ => Vec::new(),
            };
            if series.is_empty() {
                continue;
            }
            let s = chart.draw_series(LineSeries::new(series, color.stroke_width(2)))?;
            if text {
                let label = if k == 2 { format!("{} acceptance", m.name) } else { m.name.clone() };
                s.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
            if k == 2 {
                let gamma: Vec<(f64, f64)> = m
                    .metrics
                    .iter()
                    .enumerate()
                    .filter_map(|(s, x)| Some((s as f64 + 1.0, *x.get("shaping/gamma")?)))
                    .collect();
                let g = chart.draw_series(LineSeries::new(gamma, BLACK.stroke_width(1)))?;
                if text {
                    g.label("gamma(t)")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
                }
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
