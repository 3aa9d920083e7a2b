//! The HTML page at `/debug/pprof/`: what this process serves now, and why the rest is not
//! available.

use observe_core::adapter::EndpointResponse;

use crate::params::DEFAULT_SECONDS;
use crate::{heap, tasks};

/// One row of the index: a profile this process serves right now.
pub(crate) struct Entry {
    pub(crate) name: &'static str,
    pub(crate) href: &'static str,
    pub(crate) description: &'static str,
    /// CPU profiles take a duration; the row offers a small form for it.
    pub(crate) seconds: Option<u64>,
}

/// The profiles this process serves now, by name (`cmdline`: whether it is enabled).
pub(crate) fn served(cmdline: bool) -> Vec<&'static str> {
    let mut names = vec!["profile", "flamegraph"];
    if heap::availability().is_ok() {
        names.extend(["heap", "allocs"]);
    }
    if tasks::availability().is_ok() {
        names.push("tasks");
    }
    if cmdline {
        names.push("cmdline");
    }
    names
}

/// Why profiles of a binary without line tables name functions only, and the fix.
const NO_LINES: &str = "are not in profiles: this binary has no line tables, so profiles name \
    functions without their files and lines; add `debug = \"line-tables-only\"` under `[profile.release]` in the \
    workspace's Cargo.toml and rebuild";

/// The index page, for a request that named `host`, of endpoints that take CPU profiles of
/// up to `max_seconds` and serve `cmdline` or not.
pub(crate) fn page(max_seconds: u64, cmdline: bool, host: Option<&str>) -> EndpointResponse {
    let max = max_seconds;
    let cpu_seconds = DEFAULT_SECONDS.min(max);
    let flame_seconds = 10.min(max);
    let mut entries = vec![
        Entry {
            name: "profile",
            href: "profile",
            description: "CPU profile in pprof format (30 s by default). Open with <code>go tool pprof</code>.",
            seconds: Some(cpu_seconds),
        },
        Entry {
            name: "flamegraph",
            href: "flamegraph?seconds=10",
            description: "The same CPU profile as an interactive SVG flame graph: click to zoom, Ctrl+F to search.",
            seconds: Some(flame_seconds),
        },
    ];
    let heap = heap::availability();
    if heap.is_ok() {
        entries.push(Entry {
            name: "heap",
            href: "heap",
            description: "What is allocated now, sampled by the allocator, in pprof format (<code>inuse_space</code>; add <code>?seconds=N</code> for what changed over N s).",
            seconds: None,
        });
        entries.push(Entry {
            name: "allocs",
            href: "allocs",
            description: "Everything allocated since start, from the same samples (<code>alloc_space</code>).",
            seconds: None,
        });
    }
    let tasks = tasks::availability();
    if tasks.is_ok() {
        entries.push(Entry {
            name: "tasks",
            href: "tasks",
            description: "Every tokio task's await points as text, like Go's <code>goroutine?debug=2</code>.",
            seconds: None,
        });
    }
    if cmdline {
        entries.push(Entry {
            name: "cmdline",
            href: "cmdline",
            description: "The command line of this process, arguments separated by NUL bytes.",
            seconds: None,
        });
    }
    let mut notes: Vec<(&str, String)> = [("heap", heap.err()), ("tasks", tasks.err())]
        .into_iter()
        .filter_map(|(name, e)| Some((name, format!("is not available: {}", e?))))
        .collect();
    if !crate::symbols::executable_has_lines() {
        notes.push(("source lines", NO_LINES.to_owned()));
    }
    let html = render(&entries, max, &notes, host);
    EndpointResponse::ok("text/html; charset=utf-8", html.into_bytes())
}

/// Renders the index. Links are relative, so the page works wherever the routes are mounted
/// (it is always served at a path ending in `/`).
fn render(
    entries: &[Entry],
    max_seconds: u64,
    notes: &[(&str, String)],
    host: Option<&str>,
) -> String {
    let host = escape(host.unwrap_or("HOST"));
    let heap_line = if entries.iter().any(|e| e.name == "heap") {
        format!("\ngo tool pprof -top http://{host}/debug/pprof/heap")
    } else {
        String::new()
    };
    let mut rows = String::new();
    for e in entries {
        let form = match e.seconds {
            Some(seconds) => format!(
                r#"<form action="{name}"><input type="number" name="seconds" value="{seconds}" min="1" max="{max_seconds}" aria-label="seconds"> s <button>Run</button></form>"#,
                name = e.name,
            ),
            None => String::new(),
        };
        rows.push_str(&format!(
            r#"<tr><td><a href="{href}">{name}</a></td><td>{description}</td><td>{form}</td></tr>"#,
            href = e.href,
            name = e.name,
            description = e.description,
        ));
        rows.push('\n');
    }
    let note: String = notes
        .iter()
        .map(|(name, why)| format!(r#"<p class="note"><b>{name}</b> {}</p>"#, escape(why)))
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>/debug/pprof</title>
<style>
body {{ font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }}
main {{ max-width: 860px; margin: 2.5em auto; padding: 0 1.5em; }}
h1 {{ font-size: 1.6em; margin: 0 0 .2em; }}
p.lead {{ color: #59636e; margin-top: 0; }}
table {{ width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #d1d9e0; border-radius: 8px; overflow: hidden; }}
td {{ padding: .7em 1em; border-top: 1px solid #d1d9e0; vertical-align: middle; }}
tr:first-child td {{ border-top: none; }}
td:first-child {{ font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-weight: 600; white-space: nowrap; }}
code {{ white-space: nowrap; }}
a {{ color: #0969da; text-decoration: none; }} a:hover {{ text-decoration: underline; }}
form {{ white-space: nowrap; margin: 0; color: #59636e; }}
input {{ width: 4.5em; padding: .2em .4em; border: 1px solid #d1d9e0; border-radius: 6px; font: inherit; }}
button {{ padding: .2em .8em; border: 1px solid #d1d9e0; border-radius: 6px; background: #f6f8fa; font: inherit; cursor: pointer; }}
pre {{ background: #fff; border: 1px solid #d1d9e0; border-radius: 8px; padding: .8em 1em; overflow-x: auto; }}
p.note {{ background: #fff8c5; border: 1px solid #d4a72c66; border-radius: 8px; padding: .6em 1em; }}
</style>
</head>
<body>
<main>
<h1>/debug/pprof</h1>
<p class="lead">Profiles of this process. One CPU profile runs at a time; the process keeps serving while it does.</p>
<table>
{rows}</table>
{note}
<p>From a terminal:</p>
<pre>go tool pprof -top 'http://{host}/debug/pprof/profile?seconds=10'
go tool pprof -http=:8081 'http://{host}/debug/pprof/profile?seconds=30'{heap_line}</pre>
</main>
</body>
</html>
"#
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
