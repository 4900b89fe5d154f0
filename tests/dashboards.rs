//! The Grafana dashboards in `dashboards/` query only metrics the code
//! registers (STYLE §10): every `billstream_…` name in a PromQL expression
//! (panel targets, nested panels of rows, template variable queries) must
//! be a family of `billstream::telemetry::METRICS` — `_bucket`, `_sum` and
//! `_count` only on histograms — and every label it is filtered on
//! (`{label=…}`) or aggregated by (`by (…)`, `without (…)`) must be one of
//! that family's labels. Also: unique dashboard uids, at least one panel
//! each, and a provisioning file that points Grafana at the folder the
//! compose file mounts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use billstream::telemetry::METRICS;
use serde_json::Value;

/// Labels Prometheus adds to every scraped series (the scrape target's).
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Where the compose file mounts `dashboards/` in the Grafana container,
/// and where the provider must look.
const GRAFANA_DASHBOARDS: &str = "/var/lib/grafana/dashboards";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("dashboards"))
        .expect("dashboards/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("readable dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a metric name in an expression refers to.
#[derive(Debug, PartialEq)]
struct Family {
    name: &'static str,
    labels: Vec<&'static str>,
    /// A histogram's `_bucket` series (which has `le` besides its labels).
    bucket: bool,
}

/// Resolve a series name to its registered family, or say why not.
fn resolve(series: &str) -> Result<Family, String> {
    let find = |n: &str| METRICS.iter().find(|(name, _, _, _)| *name == n);
    if let Some((name, kind, labels, _)) = find(series) {
        if *kind == "histogram" {
            return Err(format!(
                "{series} is a histogram: query {series}_bucket, _sum or _count"
            ));
        }
        return Ok(Family {
            name,
            labels: labels.to_vec(),
            bucket: false,
        });
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix) {
            if let Some((name, kind, labels, _)) = find(base) {
                if *kind != "histogram" {
                    return Err(format!(
                        "{series}: {base} is a {kind}, it has no {suffix} series"
                    ));
                }
                return Ok(Family {
                    name,
                    labels: labels.to_vec(),
                    bucket: suffix == "_bucket",
                });
            }
        }
    }
    Err(format!("{series} is not registered in telemetry::METRICS"))
}

fn label_allowed(family: &Family, label: &str) -> bool {
    family.labels.contains(&label)
        || TARGET_LABELS.contains(&label)
        || (family.bucket && label == "le")
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Every `billstream_…` name in `expr`, with its byte range.
fn metric_names(expr: &str) -> Vec<(usize, usize, &str)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_word(b[i]) && (i == 0 || !is_word(b[i - 1])) {
            let start = i;
            while i < b.len() && is_word(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("billstream_") && !inside_quotes(expr, start) {
                out.push((start, i, word));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Whether byte `at` lies inside a quoted string (a label value).
fn inside_quotes(expr: &str, at: usize) -> bool {
    let mut quote: Option<u8> = None;
    let b = expr.as_bytes();
    let mut i = 0;
    while i < at {
        match (quote, b[i]) {
            (Some(_), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, c @ (b'"' | b'\'' | b'`')) => quote = Some(c),
            _ => {}
        }
        i += 1;
    }
    quote.is_some()
}

/// The label names of the matchers in the `{…}` that starts at `open`,
/// and the index just past its `}`.
fn selector_labels(expr: &str, open: usize) -> Result<(Vec<String>, usize), String> {
    let b = expr.as_bytes();
    let mut labels = Vec::new();
    let mut i = open + 1;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return Err(format!("unclosed selector in {expr:?}"));
        }
        if b[i] == b'}' {
            return Ok((labels, i + 1));
        }
        let start = i;
        while i < b.len() && is_word(b[i]) {
            i += 1;
        }
        if start == i {
            return Err(format!("cannot read a label name at {:?}", &expr[start..]));
        }
        labels.push(expr[start..i].to_string());
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~' | b' ') {
            i += 1;
        }
        let Some(&q) = b.get(i).filter(|c| matches!(c, b'"' | b'\'' | b'`')) else {
            return Err(format!("label value is not quoted in {expr:?}"));
        };
        i += 1;
        while i < b.len() && b[i] != q {
            if b[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        i += 1;
    }
}

/// Index of the `)` matching the `(` at `open`.
fn matching_close(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Index of the `(` matching the `)` at `close`.
fn matching_open(b: &[u8], close: usize) -> Option<usize> {
    let mut depth = 0;
    for i in (0..=close).rev() {
        match b[i] {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Every problem with one PromQL expression; empty when it is fine.
fn check_expr(expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let b = expr.as_bytes();
    // Names, and the labels of their selectors.
    for (_, end, name) in metric_names(expr) {
        let family = match resolve(name) {
            Ok(f) => f,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let mut j = end;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if b.get(j) == Some(&b'{') {
            match selector_labels(expr, j) {
                Ok((labels, _)) => {
                    for l in labels {
                        if !label_allowed(&family, &l) {
                            problems.push(format!(
                                "{name}{{{l}=…}}: {} has labels {:?}",
                                family.name, family.labels
                            ));
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
        }
    }
    // Grouping clauses: `op by (…) (arg)` or `op (arg) by (…)`.
    for keyword in ["by", "without"] {
        let mut from = 0;
        while let Some(pos) = expr[from..].find(keyword).map(|p| p + from) {
            from = pos + keyword.len();
            let before_ok = pos == 0 || !is_word(b[pos - 1]);
            let after_ok = b.get(from).is_none_or(|c| !is_word(*c));
            if !before_ok || !after_ok || inside_quotes(expr, pos) {
                continue;
            }
            let mut open = from;
            while open < b.len() && b[open] == b' ' {
                open += 1;
            }
            let Some(close) = (b.get(open) == Some(&b'('))
                .then(|| matching_close(b, open))
                .flatten()
            else {
                problems.push(format!("`{keyword}` without a label list in {expr:?}"));
                continue;
            };
            let labels: Vec<&str> = expr[open + 1..close]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            // The aggregated argument: before the keyword if a `)` ends
            // there, otherwise the group after the label list.
            let mut k = pos;
            while k > 0 && b[k - 1] == b' ' {
                k -= 1;
            }
            let arg = if k > 0 && b[k - 1] == b')' {
                matching_open(b, k - 1).map(|o| &expr[o..k])
            } else {
                let mut a = close + 1;
                while a < b.len() && b[a] == b' ' {
                    a += 1;
                }
                (b.get(a) == Some(&b'('))
                    .then(|| matching_close(b, a).map(|c| &expr[a..=c]))
                    .flatten()
            };
            let Some(arg) = arg else {
                problems.push(format!("cannot find what `{keyword}` groups in {expr:?}"));
                continue;
            };
            for (_, _, name) in metric_names(arg) {
                let Ok(family) = resolve(name) else { continue };
                for l in &labels {
                    if !label_allowed(&family, l) {
                        problems.push(format!(
                            "{keyword} ({l}) over {name}: {} has labels {:?}",
                            family.name, family.labels
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// A template variable query: PromQL, or Grafana's `label_values(metric,
/// label)` / `label_values(label)`.
fn check_variable_query(query: &str) -> Vec<String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let Some((selector, label)) = inner.rsplit_once(',') else {
            return Vec::new();
        };
        let mut problems = check_expr(selector);
        let label = label.trim();
        for (_, _, name) in metric_names(selector) {
            if let Ok(family) = resolve(name) {
                if !label_allowed(&family, label) {
                    problems.push(format!(
                        "label_values({name}, {label}): {} has labels {:?}",
                        family.name, family.labels
                    ));
                }
            }
        }
        return problems;
    }
    check_expr(q)
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = dashboard.get("panels") {
        walk(list, &mut out);
    }
    // Old-style rows: {"rows": [{"panels": [...]}]}.
    for row in dashboard
        .get("rows")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(list) = row.get("panels") {
            walk(list, &mut out);
        }
    }
    out
}

/// Every PromQL expression of a dashboard: (where, expression).
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let title = p.get("title").and_then(Value::as_str).unwrap_or("?");
        for t in p
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(expr) = t.get("expr").and_then(Value::as_str) {
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
        }
    }
    out
}

fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    let list = dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array);
    let mut out = Vec::new();
    for v in list.into_iter().flatten() {
        if v.get("type").and_then(Value::as_str) != Some("query") {
            continue;
        }
        let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
        let query = match v.get("query") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(q) => q.get("query").and_then(Value::as_str).map(String::from),
            None => None,
        };
        if let Some(q) = query {
            out.push((format!("variable ${name}"), q));
        }
    }
    out
}

#[test]
fn dashboards_query_only_registered_metrics_and_labels() {
    let files = dashboard_files();
    assert!(
        files.len() >= 4,
        "expected the four dashboards, found {files:?}"
    );
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for file in &files {
        let d = load(file);
        let exprs = expressions(&d);
        assert!(!exprs.is_empty(), "{}: no PromQL targets", file.display());
        for (place, expr) in exprs.iter().chain(variable_queries(&d).iter()) {
            for (_, _, name) in metric_names(expr) {
                if let Ok(f) = resolve(name) {
                    used.insert(f.name);
                }
            }
            for p in check_variable_query(expr) {
                problems.push(format!("{} {place}: {p}", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Not a rule, but a dashboard set that shows none of a family is
    // probably missing a panel: list them so the gap is visible.
    let unused: Vec<_> = METRICS
        .iter()
        .map(|(n, _, _, _)| *n)
        .filter(|n| !used.contains(n))
        .collect();
    assert!(unused.is_empty(), "metrics no dashboard shows: {unused:?}");
}

#[test]
fn dashboards_have_unique_uids_panels_and_the_provisioned_datasource() {
    let datasources =
        std::fs::read_to_string(repo().join("dashboards/provisioning/datasources/prometheus.yml"))
            .expect("datasource provisioning file");
    assert!(
        datasources.contains("url: http://prometheus:9090"),
        "{datasources}"
    );
    assert!(datasources.contains("uid: prometheus"), "{datasources}");
    let mut uids = BTreeSet::new();
    for file in dashboard_files() {
        let d = load(&file);
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no uid", file.display()));
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{}: uid {uid:?}",
            file.display()
        );
        assert!(
            uids.insert(uid.to_string()),
            "{}: uid {uid:?} used twice",
            file.display()
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{}: no title",
            file.display()
        );
        let shown: Vec<_> = panels(&d)
            .into_iter()
            .filter(|p| p.get("type").and_then(Value::as_str) != Some("row"))
            .collect();
        assert!(!shown.is_empty(), "{}: no panels", file.display());
        // Every panel and target uses the provisioned datasource (by uid),
        // so the dashboards work without an import step.
        for p in shown {
            let title = p.get("title").and_then(Value::as_str).unwrap_or("?");
            for t in p
                .get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for ds in [p.get("datasource"), t.get("datasource")]
                    .into_iter()
                    .flatten()
                {
                    assert_eq!(
                        ds.get("uid").and_then(Value::as_str),
                        Some("prometheus"),
                        "{} panel {title:?}: datasource {ds}",
                        file.display()
                    );
                }
            }
        }
    }
}

#[test]
fn dashboard_provisioning_points_at_the_mounted_folder() {
    let provider =
        std::fs::read_to_string(repo().join("dashboards/provisioning/dashboards/billstream.yml"))
            .expect("dashboard provider file");
    let paths: Vec<&str> = provider
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path:"))
        .map(|p| p.trim().trim_matches('"'))
        .collect();
    assert_eq!(paths, [GRAFANA_DASHBOARDS], "{provider}");
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose file");
    assert!(
        compose.contains(&format!("./dashboards:{GRAFANA_DASHBOARDS}:ro")),
        "docker-compose.yml must mount ./dashboards at {GRAFANA_DASHBOARDS}"
    );
    for dir in ["datasources", "dashboards"] {
        let mount = format!("./dashboards/provisioning/{dir}:/etc/grafana/provisioning/{dir}:ro");
        assert!(
            compose.contains(&mount),
            "docker-compose.yml must mount {mount}"
        );
    }
    let prometheus =
        std::fs::read_to_string(repo().join("deploy/prometheus.yml")).expect("prometheus config");
    assert!(prometheus.contains("job_name: billstream"), "{prometheus}");
    assert!(prometheus.contains("\"billstream:9464\""), "{prometheus}");
}

#[test]
fn dashboard_check_reports_what_is_not_registered() {
    // Fine: counters, histogram series, target labels, `le` on buckets.
    for good in [
        "sum by (topic) (rate(billstream_records_consumed_total{instance=~\"$instance\"}[5m]))",
        "histogram_quantile(0.99, sum by (le, phase) (rate(billstream_batch_duration_seconds_bucket[$__rate_interval])))",
        "sum(rate(billstream_persist_latency_seconds_sum[5m])) / sum(rate(billstream_persist_latency_seconds_count[5m]))",
        "sum(rate(billstream_dead_letters_total[5m])) by (reason)",
        "billstream_ready{job=\"billstream\"} == 0",
        "sum(rate(billstream_payments_total{outcome=\"failed\"}[1h]))",
    ] {
        assert_eq!(check_expr(good), Vec::<String>::new(), "{good}");
    }
    let bad = |expr: &str, needle: &str| {
        let problems = check_expr(expr);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{expr}: expected a problem mentioning {needle:?}, got {problems:?}"
        );
    };
    bad(
        "rate(billstream_records_dropped_total[5m])",
        "not registered",
    );
    bad("rate(billstream_ready_sum[5m])", "is a gauge");
    bad(
        "rate(billstream_records_consumed_total_count[5m])",
        "is a counter",
    );
    bad("billstream_batch_records", "is a histogram");
    bad(
        "rate(billstream_payments_total{currency=\"EUR\"}[5m])",
        "currency",
    );
    bad(
        "sum by (account_id) (rate(billstream_invoices_issued_total[5m]))",
        "account_id",
    );
    bad(
        "sum(rate(billstream_dead_letters_total[5m])) by (topic)",
        "by (topic)",
    );
    bad(
        "sum by (le) (rate(billstream_batch_duration_seconds_sum[5m]))",
        "by (le)",
    );
    // A name inside a label value is not a metric.
    assert_eq!(
        check_expr("sum(billstream_ready{job=\"billstream_other\"})"),
        Vec::<String>::new()
    );
    assert!(!check_variable_query("label_values(billstream_ready, topic)").is_empty());
    assert!(check_variable_query("label_values(billstream_ready, instance)").is_empty());
}

#[test]
fn dashboard_check_reaches_panels_nested_in_rows_and_variables() {
    let d = serde_json::json!({
        "panels": [
            {"type": "row", "title": "collapsed", "panels": [
                {"type": "timeseries", "title": "inner",
                 "targets": [{"expr": "rate(billstream_nope_total[5m])"}]}
            ]},
            {"type": "stat", "title": "top",
             "targets": [{"expr": "sum(billstream_ready)"}]}
        ],
        "templating": {"list": [
            {"type": "query", "name": "topic",
             "query": {"query": "label_values(billstream_ready, topic)"}}
        ]}
    });
    let exprs = expressions(&d);
    assert_eq!(exprs.len(), 2, "{exprs:?}");
    let problems: Vec<String> = exprs
        .iter()
        .chain(variable_queries(&d).iter())
        .flat_map(|(_, e)| check_variable_query(e))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("billstream_nope_total"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("label_values(billstream_ready, topic)"),
        "{problems:?}"
    );
}
