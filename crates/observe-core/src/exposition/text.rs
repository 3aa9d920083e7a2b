//! The Prometheus text format 0.0.4, and the OpenMetrics 1.0 text format: one writer, since
//! OpenMetrics is the text format plus exemplars, `_created`, counter family names without
//! `_total`, `unknown` for untyped, and `# EOF`.

use std::fmt::Write;

use super::model::{Exemplar, Family, Kind, Sample, Value};

/// Which of the two text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Prometheus,
    OpenMetrics,
}

/// Writes `families` (sorted by name) in `dialect`.
pub(crate) fn write(families: &[Family], dialect: Dialect, out: &mut String) {
    for family in families.iter().filter(|f| !f.metrics.is_empty()) {
        write_family(family, dialect == Dialect::OpenMetrics, out);
    }
    if dialect == Dialect::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

fn write_family(family: &Family, om: bool, out: &mut String) {
    // OpenMetrics names a counter family without its `_total`; its samples carry it.
    let name = match family.kind {
        Kind::Counter if om => family.name.strip_suffix("_total").unwrap_or(&family.name),
        _ => &family.name,
    };
    let kind = match family.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
        Kind::Untyped if om => "unknown",
        Kind::Untyped => "untyped",
    };
    let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help, om));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    // Where an exemplar may follow a sample (OpenMetrics only), and the line's end.
    let end = |out: &mut String, exemplar: Option<&Exemplar>| {
        if let Some(e) = exemplar.filter(|_| om) {
            write_exemplar(out, e);
        }
        out.push('\n');
    };
    for sample in &family.metrics {
        match &sample.value {
            Value::Counter(v, exemplar) => {
                line(
                    out,
                    om,
                    name,
                    if om { "_total" } else { "" },
                    sample,
                    None,
                    *v,
                );
                end(out, exemplar.as_ref());
            }
            Value::Gauge(v) => {
                line(out, om, name, "", sample, None, *v);
                end(out, None);
            }
            Value::Summary {
                count,
                sum,
                quantiles,
            } => {
                for &(q, v) in quantiles {
                    line(out, om, name, "", sample, Some(("quantile", q)), v);
                    end(out, None);
                }
                line(out, om, name, "_sum", sample, None, *sum);
                end(out, None);
                line(out, om, name, "_count", sample, None, *count as f64);
                end(out, None);
            }
            Value::Histogram(h) => {
                for b in &h.buckets {
                    let le = Some(("le", b.upper));
                    line(out, om, name, "_bucket", sample, le, b.cumulative as f64);
                    end(out, b.exemplar.as_ref());
                }
                line(out, om, name, "_sum", sample, None, h.sum);
                end(out, None);
                line(out, om, name, "_count", sample, None, h.count as f64);
                end(out, None);
            }
        }
        if let (true, Some(created), Kind::Counter | Kind::Histogram | Kind::Summary) =
            (om, sample.created, family.kind)
        {
            line(out, om, name, "_created", sample, None, created);
            end(out, None);
        }
    }
}

/// One sample, without its line end.
fn line(
    out: &mut String,
    om: bool,
    name: &str,
    suffix: &str,
    sample: &Sample,
    extra: Option<(&str, f64)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !sample.labels.is_empty() || extra.is_some() {
        out.push('{');
        for (i, (k, v)) in sample.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            label(out, k, v);
        }
        if let Some((k, v)) = extra {
            if !sample.labels.is_empty() {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            number(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    number(out, value);
    // Milliseconds in the Prometheus text format, seconds in OpenMetrics.
    match sample.timestamp_ms {
        Some(ms) if om => {
            out.push(' ');
            number(out, ms as f64 / 1000.0);
        }
        Some(ms) => {
            let _ = write!(out, " {ms}");
        }
        None => {}
    }
}

fn write_exemplar(out: &mut String, e: &Exemplar) {
    out.push_str(" # {");
    for (i, (k, v)) in e.labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        label(out, k, v);
    }
    out.push_str("} ");
    number(out, e.value);
    let _ = write!(out, " {:.3}", e.timestamp);
}

fn label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn escape_help(help: &str, om: bool) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if om => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// A float as both formats spell it: `+Inf`, `-Inf`, `NaN`, integers without a fraction.
fn number(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}
