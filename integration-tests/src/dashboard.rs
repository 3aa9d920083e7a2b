//! The Grafana dashboards in `grafana-dashboards/`: their panels, their PromQL, and Grafana's
//! variable interpolation, so tests can lint the queries and run them against a real Prometheus.

use std::path::PathBuf;

use serde_json::Value;

use crate::workspace_root;

/// One dashboard file, parsed.
pub struct Dashboard {
    /// The file it was read from.
    pub file: PathBuf,
    /// Its JSON model.
    pub json: Value,
}

/// One PromQL query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The expression as written, Grafana variables unexpanded.
    pub expr: String,
}

impl Dashboard {
    /// Every `*.json` file in `grafana-dashboards/`, sorted by name.
    pub fn load_all() -> Vec<Dashboard> {
        let dir = workspace_root().join("grafana-dashboards");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(&file).expect("readable dashboard");
                Dashboard::parse(file, &text)
            })
            .collect()
    }

    /// Parses `text` as a dashboard that came from `file`.
    pub fn parse(file: PathBuf, text: &str) -> Dashboard {
        let json = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        Dashboard { file, json }
    }

    /// The file name, for messages.
    pub fn name(&self) -> String {
        self.file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// Every panel, the panels inside collapsed rows included, rows themselves included.
    pub fn panels(&self) -> Vec<&Value> {
        fn collect<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for panel in panels.as_array().into_iter().flatten() {
                out.push(panel);
                if let Some(inner) = panel.get("panels") {
                    collect(inner, out);
                }
            }
        }
        let mut out = Vec::new();
        if let Some(panels) = self.json.get("panels") {
            collect(panels, &mut out);
        }
        out
    }

    /// The panels that show data (everything but rows).
    pub fn data_panels(&self) -> Vec<&Value> {
        self.panels()
            .into_iter()
            .filter(|p| p["type"] != "row")
            .collect()
    }

    /// Every panel target's PromQL expression.
    pub fn queries(&self) -> Vec<PanelQuery> {
        let mut out = Vec::new();
        for panel in self.data_panels() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        out
    }

    /// The template variables, in order.
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The query text of a `query` variable (`label_values(...)`), whichever of Grafana's two
/// shapes (a string, or an object with `query`) it is stored in.
pub fn variable_query(variable: &Value) -> Option<&str> {
    match &variable["query"] {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("query").and_then(Value::as_str),
        _ => None,
    }
}

/// Splits `label_values(SELECTOR, LABEL)` (or `label_values(LABEL)`) into its selector (if
/// any) and label.
pub fn parse_label_values(query: &str) -> Option<(Option<String>, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((selector, label)) => {
            Some((Some(selector.trim().to_owned()), label.trim().to_owned()))
        }
        None => Some((None, inner.trim().to_owned())),
    }
}

/// Replaces Grafana variable references in `text` — `$name`, `${name}`, `${name:format}` and
/// `[[name]]` — with what `value(name, format)` returns; references it returns `None` for are
/// left as they are.
pub fn expand_variables(
    text: &str,
    value: &dyn Fn(&str, Option<&str>) -> Option<String>,
) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let (name, format, len) = if let Some(braced) = tail.strip_prefix("${") {
            match braced.find('}') {
                Some(end) => {
                    let body = &braced[..end];
                    let (name, format) = match body.split_once(':') {
                        Some((n, f)) => (n, Some(f)),
                        None => (body, None),
                    };
                    (name, format, end + 3)
                }
                None => ("", None, 0),
            }
        } else if let Some(plain) = tail.strip_prefix('$') {
            let end = plain.find(|c| !is_name(c)).unwrap_or(plain.len());
            (&plain[..end], None, end + 1)
        } else if let Some(old) = tail.strip_prefix("[[") {
            match old.find("]]") {
                Some(end) if old[..end].chars().all(is_name) => (&old[..end], None, end + 4),
                _ => ("", None, 0),
            }
        } else {
            ("", None, 0)
        };
        match (name.is_empty(), value(name, format)) {
            (false, Some(v)) => {
                out.push_str(&v);
                rest = &tail[len..];
            }
            _ => {
                let first = tail.chars().next().map_or(1, char::len_utf8);
                out.push_str(&tail[..first]);
                rest = &tail[first..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// How Grafana's Prometheus data source writes the selected values of a multi-value (or
/// include-All) variable into a query: each value regex-escaped (with the backslashes doubled,
/// since they sit inside a PromQL string), several joined as `(a|b)`.
pub fn grafana_regex(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            let mut e = String::with_capacity(v.len());
            for c in v.chars() {
                match c {
                    '\\' => e.push_str("\\\\\\\\"),
                    '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '('
                    | ')' | '|' => {
                        e.push_str("\\\\");
                        e.push(c);
                    }
                    c => e.push(c),
                }
            }
            e
        })
        .collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_every_reference_form() {
        let value = |name: &str, format: Option<&str>| match (name, format) {
            ("job", None) => Some("J".to_owned()),
            ("job", Some("regex")) => Some("R".to_owned()),
            ("__rate_interval", None) => Some("15s".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand_variables("a{job=~\"$job\",x=\"${job}\",y=\"${job:regex}\",z=\"[[job]]\"}[$__rate_interval] $other", &value),
            "a{job=~\"J\",x=\"J\",y=\"R\",z=\"J\"}[15s] $other"
        );
    }

    #[test]
    fn multi_values_are_regex_escaped_like_grafana() {
        let values = ["/api/items/{id}".to_owned(), "127.0.0.1:80".to_owned()];
        assert_eq!(
            grafana_regex(&values),
            r"(/api/items/\\{id\\}|127\\.0\\.0\\.1:80)"
        );
        assert_eq!(grafana_regex(&values[..1]), r"/api/items/\\{id\\}");
    }

    #[test]
    fn splits_label_values() {
        assert_eq!(
            parse_label_values("label_values(up{job=~\"$job\"}, instance)"),
            Some((Some("up{job=~\"$job\"}".to_owned()), "instance".to_owned()))
        );
        assert_eq!(
            parse_label_values("label_values(job)"),
            Some((None, "job".to_owned()))
        );
    }
}
