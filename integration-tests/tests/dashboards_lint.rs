//! Lints every dashboard in `grafana-dashboards/`: the rules in docs/dashboards.md, with each
//! PromQL expression parsed by `promql-parser` after Grafana's variables are expanded.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use integration_tests::{expand_variables, parse_label_values, variable_query, Dashboard};
use promql_parser::label::{MatchOp, Matchers};
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use serde_json::Value;

/// The dashboards the docs, the cross-links and users' bookmarks rely on, by file and uid.
const STABLE_UIDS: &[(&str, &str)] = &[
    ("route-detail.json", "observe-route-detail"),
    ("service-overview.json", "observe-service-overview"),
];

/// The variables every dashboard has, in order, each with the label its values come from.
const VARIABLES: &[(&str, &str)] = &[
    ("job", "job"),
    ("instance", "instance"),
    ("service", "service"),
    ("route", "http_route"),
];

/// Durations that stand in for Grafana's interval variables, so the AST can tell a
/// `$__rate_interval` from a hard-coded `[5m]`. No real dashboard would write these.
const RATE_INTERVAL: Duration = Duration::from_secs(7777);
const RANGE: Duration = Duration::from_secs(8888);
const INTERVAL: Duration = Duration::from_secs(9999);

/// What a multi-value variable `name` expands to in the lint: one recognisable regex.
fn sentinel(name: &str) -> String {
    format!("(lint-{name}-a|lint-{name}-b)")
}

fn lint_value(name: &str, _format: Option<&str>, defined: &HashSet<String>) -> Option<String> {
    match name {
        "__rate_interval" => Some(format!("{}s", RATE_INTERVAL.as_secs())),
        "__range" => Some(format!("{}s", RANGE.as_secs())),
        "__interval" => Some(format!("{}s", INTERVAL.as_secs())),
        "__range_s" => Some(RANGE.as_secs().to_string()),
        "__interval_ms" => Some((INTERVAL.as_millis()).to_string()),
        name if defined.contains(name) => Some(sentinel(name)),
        _ => None,
    }
}

fn is_counter_series(name: &str) -> bool {
    ["_total", "_count", "_sum", "_bucket"]
        .iter()
        .any(|s| name.ends_with(s))
        || is_native_histogram(name)
}

/// The one family observe exposes with native buckets (`docs/metrics.md`): its bare name
/// selects the native histogram, which only grows, as a counter.
fn is_native_histogram(name: &str) -> bool {
    name == "http_server_request_duration_seconds"
}

/// The PromQL rules of one expression, checked on its AST.
struct ExprLint<'a> {
    at: String,
    errors: &'a mut Vec<String>,
}

impl ExprLint<'_> {
    fn error(&mut self, what: String) {
        self.errors.push(format!("{}: {what}", self.at));
    }

    fn walk(&mut self, expr: &Expr, counter_allowed: bool) {
        match expr {
            Expr::Aggregate(a) => {
                self.walk(&a.expr, false);
                if let Some(p) = &a.param {
                    self.walk(p, false);
                }
            }
            Expr::Unary(u) => self.walk(&u.expr, false),
            Expr::Binary(b) => {
                self.walk(&b.lhs, false);
                self.walk(&b.rhs, false);
            }
            Expr::Paren(p) => self.walk(&p.expr, false),
            Expr::Subquery(s) => {
                self.error(
                    "uses a subquery; dashboards query raw series or recording rules".into(),
                );
                self.walk(&s.expr, false);
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
            Expr::VectorSelector(vs) => self.selector(vs, counter_allowed),
            // Hard-coded ranges are caught on the text before expansion (`written_ranges`).
            Expr::MatrixSelector(ms) => self.selector(&ms.vs, counter_allowed),
            Expr::Call(call) => {
                let name = call.func.name;
                let args = &call.args.args;
                match name {
                    "rate" | "irate" | "increase" => {
                        match args.first().map(|a| a.as_ref()) {
                            Some(Expr::MatrixSelector(ms)) => {
                                let ok = ms.range == RATE_INTERVAL
                                    || (name == "increase" && ms.range == RANGE);
                                if !ok {
                                    self.error(format!(
                                        "{name}() must range over [$__rate_interval]"
                                    ));
                                }
                            }
                            _ => self.error(format!("{name}() must take a range selector")),
                        }
                        let counters = name != "irate";
                        for arg in args {
                            self.walk(arg, counters);
                        }
                    }
                    "histogram_quantile" => {
                        if let Some(inner) = args.get(1) {
                            if !aggregates_sum_by_le(inner) && !aggregates_native(inner) {
                                self.error("histogram_quantile() must take `sum by (le, ...) (rate(..._bucket[...]))` or, for a native histogram, `sum by (...) (rate(NAME[...]))` without le".into());
                            }
                        }
                        for arg in args {
                            self.walk(arg, false);
                        }
                    }
                    _ => {
                        for arg in args {
                            self.walk(arg, false);
                        }
                    }
                }
            }
        }
    }

    fn selector(&mut self, vs: &VectorSelector, counter_allowed: bool) {
        let name = vs
            .name
            .clone()
            .or_else(|| {
                vs.matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
            })
            .unwrap_or_default();
        if is_counter_series(&name) && !counter_allowed {
            self.error(format!("counter series {name} outside rate()/increase()"));
        }
        let mut required = vec!["job", "instance"];
        if name.starts_with("http_server_") {
            required.push("service");
        }
        for var in required {
            if !has_variable_matcher(&vs.matchers, var, var) {
                self.error(format!("selector {name} lacks {var}=~\"${var}\""));
            }
        }
        for m in &vs.matchers.matchers {
            if m.name == "le" && matches!(m.op, MatchOp::Equal | MatchOp::NotEqual) {
                self.error(format!("selector {name} matches an exact le=\"{}\": bucket labels are not stable strings", m.value));
            }
        }
    }
}

/// `label=~"$variable"` among `matchers` (compared after expansion, through the sentinel).
fn has_variable_matcher(matchers: &Matchers, label: &str, variable: &str) -> bool {
    let want = sentinel(variable);
    matchers
        .matchers
        .iter()
        .any(|m| m.name == label && matches!(m.op, MatchOp::Re(_)) && m.value == want)
}

/// `sum by (le, ...)` over the rate of classic `_bucket` series.
fn aggregates_sum_by_le(expr: &Expr) -> bool {
    aggregates(expr, true, &|name| name.ends_with("_bucket"))
}

/// `sum` (not by `le`) over the rate of a native histogram.
fn aggregates_native(expr: &Expr) -> bool {
    aggregates(expr, false, &is_native_histogram)
}

/// `sum` grouping by `le` (or not) over selectors whose names all pass `name_ok`.
fn aggregates(expr: &Expr, by_le: bool, name_ok: &dyn Fn(&str) -> bool) -> bool {
    fn names_ok(expr: &Expr, name_ok: &dyn Fn(&str) -> bool) -> bool {
        match expr {
            Expr::Paren(p) => names_ok(&p.expr, name_ok),
            Expr::Call(c) => c.args.args.iter().all(|a| names_ok(a, name_ok)),
            Expr::MatrixSelector(ms) => ms.vs.name.as_deref().is_some_and(name_ok),
            Expr::VectorSelector(vs) => vs.name.as_deref().is_some_and(name_ok),
            _ => true,
        }
    }
    match expr {
        Expr::Paren(p) => aggregates(&p.expr, by_le, name_ok),
        Expr::Aggregate(a) => {
            let groups_le = matches!(&a.modifier, Some(LabelModifier::Include(l)) if l.labels.iter().any(|l| l == "le"));
            a.op.to_string() == "sum" && groups_le == by_le && names_ok(&a.expr, name_ok)
        }
        _ => false,
    }
}

/// The ranges written in `expr` before expansion, skipping `[...]` inside strings (regexes).
fn written_ranges(expr: &str) -> Vec<String> {
    let mut ranges = Vec::new();
    let mut in_string: Option<char> = None;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => in_string = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => in_string = Some(c),
            (None, '[') => ranges.push(chars.by_ref().take_while(|&c| c != ']').collect()),
            (None, _) => {}
        }
    }
    ranges
}

fn lint_expr(at: &str, raw: &str, defined: &HashSet<String>, errors: &mut Vec<String>) {
    for range in written_ranges(raw) {
        if range != "$__rate_interval" && range != "$__range" {
            errors.push(format!(
                "{at}: range [{range}] is not [$__rate_interval] (nor [$__range])"
            ));
        }
    }
    let expanded = expand_variables(raw, &|name, format| lint_value(name, format, defined));
    if expanded.contains('$') {
        errors.push(format!(
            "{at}: refers to a variable the dashboard does not define: {raw}"
        ));
        return;
    }
    match parser::parse(&expanded) {
        Ok(ast) => ExprLint {
            at: at.to_owned(),
            errors,
        }
        .walk(&ast, false),
        Err(e) => errors.push(format!("{at}: does not parse ({e}): {expanded}")),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn lint_variables(d: &Dashboard, defined: &HashSet<String>, errors: &mut Vec<String>) {
    let name = d.name();
    let vars = d.variables();
    let names: Vec<&str> = vars.iter().map(|v| str_at(v, "/name")).collect();
    let mut want = vec!["datasource"];
    want.extend(VARIABLES.iter().map(|(n, _)| *n));
    if names != want {
        errors.push(format!("{name}: variables are {names:?}, want {want:?}"));
    }
    for var in &vars {
        let vname = str_at(var, "/name");
        let at = format!("{name}: variable {vname}");
        if vname == "datasource" {
            if str_at(var, "/type") != "datasource" || str_at(var, "/query") != "prometheus" {
                errors.push(format!(
                    "{at}: must be a datasource variable of type prometheus"
                ));
            }
            continue;
        }
        let Some(position) = VARIABLES.iter().position(|(n, _)| *n == vname) else {
            continue;
        };
        if str_at(var, "/type") != "query" {
            errors.push(format!("{at}: must be a query variable"));
        }
        if str_at(var, "/datasource/uid") != "${datasource}" {
            errors.push(format!("{at}: must query the ${{datasource}} variable"));
        }
        if var["refresh"] != 2 {
            errors.push(format!(
                "{at}: must refresh on time range change (refresh: 2)"
            ));
        }
        if var["multi"] != true || var["includeAll"] != true {
            errors.push(format!("{at}: must be multi-select with All"));
        }
        let query = variable_query(var).unwrap_or_default();
        let Some((selector, label)) = parse_label_values(query) else {
            errors.push(format!(
                "{at}: query {query:?} is not label_values(selector, label)"
            ));
            continue;
        };
        if label != VARIABLES[position].1 {
            errors.push(format!(
                "{at}: lists label {label}, want {}",
                VARIABLES[position].1
            ));
        }
        let selector = selector.unwrap_or_default();
        let expanded = expand_variables(&selector, &|n, f| lint_value(n, f, defined));
        match parser::parse(&expanded) {
            Ok(Expr::VectorSelector(vs)) => {
                for (previous, previous_label) in &VARIABLES[..position] {
                    if !has_variable_matcher(&vs.matchers, previous_label, previous) {
                        errors.push(format!("{at}: not chained: its selector lacks {previous_label}=~\"${previous}\""));
                    }
                }
            }
            Ok(_) => errors.push(format!("{at}: {selector:?} is not a series selector")),
            Err(e) => errors.push(format!("{at}: selector does not parse ({e})")),
        }
    }
}

/// Every rule violation of dashboard `d`; `uids` are the uids links may point to.
fn lint(d: &Dashboard, raw: &str, uids: &BTreeSet<String>) -> Vec<String> {
    let mut errors = Vec::new();
    let name = d.name();
    let j = &d.json;
    if j["schemaVersion"] != 39 {
        errors.push(format!(
            "{name}: schemaVersion is {}, want 39",
            j["schemaVersion"]
        ));
    }
    let uid = str_at(j, "/uid");
    if uid.is_empty()
        || uid.len() > 40
        || !uid
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errors.push(format!(
            "{name}: uid {uid:?} must be a fixed lowercase slug of at most 40 characters"
        ));
    }
    if j["editable"] != false {
        errors.push(format!("{name}: editable must be false"));
    }
    if j.get("__inputs").is_some() || raw.contains("${DS_") {
        errors.push(format!(
            "{name}: uses ${{DS_...}} import inputs; use the datasource variable"
        ));
    }
    let defined: HashSet<String> = d
        .variables()
        .iter()
        .map(|v| str_at(v, "/name").to_owned())
        .collect();
    lint_variables(d, &defined, &mut errors);

    let mut ids = HashSet::new();
    for panel in d.panels() {
        let title = str_at(panel, "/title");
        let at = format!("{name}: panel {title:?}");
        if !ids.insert(panel["id"].to_string()) {
            errors.push(format!("{at}: id {} is not unique", panel["id"]));
        }
        if title.trim().is_empty() {
            errors.push(format!("{at}: has no title"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if str_at(panel, "/description").trim().is_empty() {
            errors.push(format!("{at}: has no description"));
        }
        if str_at(panel, "/fieldConfig/defaults/unit").is_empty() {
            errors.push(format!("{at}: has no unit (fieldConfig.defaults.unit)"));
        }
        if str_at(panel, "/datasource/uid") != "${datasource}" {
            errors.push(format!("{at}: must use the ${{datasource}} variable"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            errors.push(format!("{at}: has no query"));
        }
        for target in &targets {
            let at = format!("{at} query {}", str_at(target, "/refId"));
            if str_at(target, "/datasource/uid") != "${datasource}" {
                errors.push(format!("{at}: must use the ${{datasource}} variable"));
            }
            lint_expr(&at, str_at(target, "/expr"), &defined, &mut errors);
        }
        // Links to other dashboards must point at a uid that exists.
        let text = panel.to_string();
        for link in text.split("/d/").skip(1) {
            let target = link.split(['/', '?', '"']).next().unwrap_or_default();
            if !uids.contains(target) {
                errors.push(format!(
                    "{at}: links to /d/{target}, which is no dashboard here"
                ));
            }
        }
    }
    errors
}

fn all_uids(dashboards: &[Dashboard]) -> BTreeSet<String> {
    dashboards
        .iter()
        .map(|d| str_at(&d.json, "/uid").to_owned())
        .collect()
}

#[test]
fn every_dashboard_passes_the_lint() {
    let dashboards = Dashboard::load_all();
    assert!(
        dashboards.len() >= 2,
        "expected the dashboards in grafana-dashboards/"
    );
    let uids = all_uids(&dashboards);
    let mut errors = Vec::new();
    for d in &dashboards {
        let raw = std::fs::read_to_string(&d.file).expect("readable dashboard");
        let found = lint(d, &raw, &uids);
        println!(
            "{}: {} panels, {} queries, {} lint errors",
            d.name(),
            d.data_panels().len(),
            d.queries().len(),
            found.len()
        );
        errors.extend(found);
    }
    assert!(
        errors.is_empty(),
        "dashboard lint failed:\n{}",
        errors.join("\n")
    );
}

#[test]
fn dashboard_uids_are_stable_and_distinct() {
    let dashboards = Dashboard::load_all();
    let found: Vec<(String, String)> = dashboards
        .iter()
        .map(|d| (d.name(), str_at(&d.json, "/uid").to_owned()))
        .collect();
    let want: Vec<(String, String)> = STABLE_UIDS
        .iter()
        .map(|(f, u)| (f.to_string(), u.to_string()))
        .collect();
    assert_eq!(
        found, want,
        "a dashboard's uid changed or a dashboard was added without a stable uid here"
    );
}

/// A dashboard that breaks every rule once, to prove the lint can fail.
const BROKEN: &str = r#"{
  "uid": "broken",
  "title": "broken",
  "schemaVersion": 27,
  "editable": true,
  "__inputs": [{"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}],
  "templating": {"list": [
    {"name": "datasource", "type": "datasource", "query": "prometheus"},
    {"name": "job", "type": "query", "datasource": {"uid": "${datasource}"}, "refresh": 2, "multi": true, "includeAll": true,
     "query": "label_values(http_server_requests_total, job)"},
    {"name": "instance", "type": "query", "datasource": {"uid": "${datasource}"}, "refresh": 1, "multi": false, "includeAll": true,
     "query": "label_values(http_server_requests_total, instance)"},
    {"name": "service", "type": "query", "datasource": {"uid": "${datasource}"}, "refresh": 2, "multi": true, "includeAll": true,
     "query": "label_values(http_server_requests_total{job=~\"$job\", instance=~\"$instance\"}, service)"},
    {"name": "route", "type": "query", "datasource": {"uid": "${datasource}"}, "refresh": 2, "multi": true, "includeAll": true,
     "query": "label_values(http_server_requests_total{job=~\"$job\", instance=~\"$instance\", service=~\"$service\"}, http_route)"}
  ]},
  "panels": [
    {"id": 1, "type": "timeseries", "title": "Hard-coded window", "datasource": {"uid": "${DS_PROMETHEUS}"},
     "fieldConfig": {"defaults": {}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "sum(rate(http_server_requests_total{job=~\"$job\"}[5m]))"}]},
    {"id": 2, "type": "stat", "title": "Raw counter", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "short"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "sum(http_server_requests_total{job=~\"$job\", instance=~\"$instance\", service=~\"$service\"})"}]},
    {"id": 3, "type": "timeseries", "title": "Quantile without le", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "s"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "histogram_quantile(0.99, sum by (http_route) (rate(http_server_request_duration_seconds_bucket{job=~\"$job\", instance=~\"$instance\", service=~\"$service\"}[$__rate_interval])))"}]},
    {"id": 4, "type": "timeseries", "title": "Exact le", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "reqps"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "sum(rate(http_server_request_duration_seconds_bucket{job=~\"$job\", instance=~\"$instance\", service=~\"$service\", le=\"0.5\"}[$__rate_interval]))"}]},
    {"id": 5, "type": "timeseries", "title": "Unknown variable", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "reqps"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "sum(rate(http_server_requests_total{job=~\"$job\", instance=~\"$instance\", service=~\"$region\"}[$__rate_interval]))"}]},
    {"id": 6, "type": "timeseries", "title": "Does not parse", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "reqps"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "sum(rate(http_server_requests_total{job=~\"$job\", instance=~\"$instance\", service=~\"$service\"}[$__rate_interval])"}]},
    {"id": 8, "type": "timeseries", "title": "Native by le", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "s"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds{job=~\"$job\", instance=~\"$instance\", service=~\"$service\"}[$__rate_interval])))"}]},
    {"id": 9, "type": "stat", "title": "Raw native", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "short"}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "histogram_count(http_server_request_duration_seconds{job=~\"$job\", instance=~\"$instance\", service=~\"$service\"})"}]},
    {"id": 7, "type": "table", "title": "Dead link", "description": "d", "datasource": {"uid": "${datasource}"},
     "fieldConfig": {"defaults": {"unit": "short", "links": [{"url": "/d/nowhere/x"}]}},
     "targets": [{"refId": "A", "datasource": {"uid": "${datasource}"},
                  "expr": "process_open_fds{job=~\"$job\", instance=~\"$instance\"}"}]}
  ]
}"#;

#[test]
fn a_broken_dashboard_is_rejected() {
    let d = Dashboard::parse(PathBuf::from("broken.json"), BROKEN);
    let errors = lint(&d, BROKEN, &BTreeSet::from(["broken".to_owned()]));
    let joined = errors.join("\n");
    let expected = [
        "broken.json: schemaVersion is 27",
        "broken.json: editable must be false",
        "broken.json: uses ${DS_...} import inputs",
        "variable instance: must refresh on time range change",
        "variable instance: must be multi-select",
        "variable instance: not chained: its selector lacks job=~\"$job\"",
        "panel \"Hard-coded window\": has no description",
        "panel \"Hard-coded window\": has no unit",
        "panel \"Hard-coded window\": must use the ${datasource} variable",
        "panel \"Hard-coded window\" query A: range [5m] is not [$__rate_interval]",
        "panel \"Hard-coded window\" query A: rate() must range over [$__rate_interval]",
        "panel \"Hard-coded window\" query A: selector http_server_requests_total lacks instance=~\"$instance\"",
        "panel \"Hard-coded window\" query A: selector http_server_requests_total lacks service=~\"$service\"",
        "panel \"Raw counter\" query A: counter series http_server_requests_total outside rate()/increase()",
        "panel \"Quantile without le\" query A: histogram_quantile() must take `sum by (le, ...)",
        "panel \"Exact le\" query A: selector http_server_request_duration_seconds_bucket matches an exact le=\"0.5\"",
        "panel \"Unknown variable\" query A: refers to a variable the dashboard does not define",
        "panel \"Does not parse\" query A: does not parse",
        "panel \"Dead link\": links to /d/nowhere",
        "panel \"Native by le\" query A: histogram_quantile() must take",
        "panel \"Raw native\" query A: counter series http_server_request_duration_seconds outside rate()/increase()",
    ];
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|e| !joined.contains(e))
        .collect();
    assert!(
        missing.is_empty(),
        "the lint missed:\n{}\n\nit said:\n{joined}",
        missing.join("\n")
    );
    assert_eq!(
        errors.len(),
        expected.len(),
        "unexpected extra complaints:\n{joined}"
    );
}
