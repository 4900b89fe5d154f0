//! Charts as inline SVG drawn on the server: no script, no library, no
//! CDN. A chart is a bar chart over categories (months, funnel stages,
//! days), with one or more series side by side or stacked; every bar
//! carries a `<title>` with its exact value (the text of record: the bar's
//! height is only a picture of it). A chart with nothing to show says so
//! instead of drawing an empty frame.

use super::html::esc;

/// One series: its name, and per category its value (for the geometry)
/// and its exact label (for the reader).
pub struct Series {
    pub name: String,
    pub values: Vec<(f64, String)>,
}

pub struct Chart<'a> {
    /// Element id (the browser test finds charts by it).
    pub id: &'a str,
    pub title: &'a str,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// Series stacked in one bar per category, instead of side by side.
    pub stacked: bool,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;
const PALETTE: [&str; 6] = [
    "#2b6cb0", "#38a169", "#d69e2e", "#e53e3e", "#805ad5", "#319795",
];

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

impl Chart<'_> {
    /// The chart as a `<figure>`: the SVG and its legend, or a note that
    /// there is no data yet.
    pub fn render(&self) -> String {
        let mut out = format!(
            r#"<figure class="chart" id="{}"><figcaption>{}</figcaption>"#,
            esc(self.id),
            esc(self.title)
        );
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let has_data = self
            .series
            .iter()
            .any(|s| s.values.iter().any(|(v, _)| positive(*v)));
        if self.categories.is_empty() || !has_data {
            out.push_str(r#"<p class="no-data">nothing to chart yet</p></figure>"#);
            return out;
        }
        let n = self.categories.len() as f64;
        let per_category = |c: usize| -> f64 {
            let vals = self
                .series
                .iter()
                .map(|s| s.values.get(c).map_or(0.0, |(v, _)| v.max(0.0)));
            if self.stacked {
                vals.sum()
            } else {
                vals.fold(0.0, f64::max)
            }
        };
        let max = (0..self.categories.len())
            .map(per_category)
            .fold(0.0, f64::max);
        let plot_h = HEIGHT - TOP - BOTTOM;
        let slot = (WIDTH - LEFT * 2.0) / n;
        let group = slot * 0.8;
        let lanes = if self.stacked {
            1.0
        } else {
            self.series.len().max(1) as f64
        };
        let bar_w = group / lanes;
        out.push_str(&format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"#,
            esc(self.title)
        ));
        out.push_str(&format!(
            r##"<line x1="{LEFT}" y1="{y}" x2="{x2}" y2="{y}" stroke="#888"/>"##,
            y = HEIGHT - BOTTOM,
            x2 = WIDTH - LEFT
        ));
        for (c, category) in self.categories.iter().enumerate() {
            let x0 = LEFT + slot * c as f64 + (slot - group) / 2.0;
            let mut stack = 0.0;
            for (s, series) in self.series.iter().enumerate() {
                let Some((v, label)) = series.values.get(c) else {
                    continue;
                };
                let v = v.max(0.0);
                if !positive(v) {
                    continue;
                }
                // A visible sliver at least, for a small non-zero value.
                let h = (v / max * plot_h).max(1.0);
                let (x, y) = if self.stacked {
                    stack += h;
                    (x0, HEIGHT - BOTTOM - stack)
                } else {
                    (x0 + bar_w * s as f64, HEIGHT - BOTTOM - h)
                };
                out.push_str(&format!(
                    r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{}"><title>{}: {}: {}</title></rect>"#,
                    color(s),
                    esc(category),
                    esc(&series.name),
                    esc(label),
                    w = (bar_w - 1.0).max(1.0),
                ));
            }
            out.push_str(&format!(
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                x0 + group / 2.0,
                HEIGHT - BOTTOM + 14.0,
                esc(category)
            ));
        }
        out.push_str("</svg><ul class=\"legend\">");
        for (s, series) in self.series.iter().enumerate() {
            out.push_str(&format!(
                r#"<li><span class="swatch" style="background:{}"></span>{}</li>"#,
                color(s),
                esc(&series.name)
            ));
        }
        out.push_str("</ul></figure>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, values: &[f64]) -> Series {
        Series {
            name: name.into(),
            values: values.iter().map(|v| (*v, v.to_string())).collect(),
        }
    }

    #[test]
    fn bars_are_as_tall_as_their_values_with_exact_labels_and_escaped_names() {
        let chart = Chart {
            id: "c",
            title: "t",
            categories: vec!["2026-03".into(), "<b>".into()],
            series: vec![series("revenue", &[10.0, 5.0]), series("<i>", &[0.0, 2.5])],
            stacked: false,
        };
        let svg = chart.render();
        // Three non-zero values, three bars; the tallest fills the plot.
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 3, "{svg}");
        assert!(svg.contains(r#"height="172.0""#), "{svg}");
        assert!(svg.contains(r#"height="86.0""#), "{svg}");
        assert!(
            svg.contains("<title>&lt;b&gt;: &lt;i&gt;: 2.5</title>"),
            "{svg}"
        );
        assert!(!svg.contains("<b>") && !svg.contains("<i>"), "{svg}");
    }

    #[test]
    fn a_chart_without_data_says_so_instead_of_an_empty_frame() {
        let chart = Chart {
            id: "c",
            title: "t",
            categories: vec!["2026-03".into()],
            series: vec![series("revenue", &[0.0])],
            stacked: true,
        };
        let html = chart.render();
        assert!(html.contains("nothing to chart yet"));
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn stacked_bars_sit_on_each_other() {
        let chart = Chart {
            id: "c",
            title: "t",
            categories: vec!["d".into()],
            series: vec![series("a", &[1.0]), series("b", &[3.0])],
            stacked: true,
        };
        let svg = chart.render();
        // 172 px for 4: a is 43 high on the axis (184), b 129 on top of it.
        assert!(svg.contains(r#"y="141.0" width="#), "{svg}");
        assert!(svg.contains(r#"y="12.0" width="#), "{svg}");
    }
}
