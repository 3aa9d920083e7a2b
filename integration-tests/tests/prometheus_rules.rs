//! The files in `prometheus/` pass the real tools' own checks: `promtool check rules`,
//! `promtool test rules` (the unit tests in rules.test.yml), `promtool check config` and
//! `amtool check-config`.

use std::path::Path;
use std::process::Command;

use integration_tests::{amtool, promtool, workspace_root};

/// Runs `tool args...` in `prometheus/` and asserts it succeeds; returns what it printed.
fn run_ok(tool: &Path, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(workspace_root().join("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{text}",
        tool.display(),
        output.status
    );
    text
}

#[test]
fn rules_pass_promtool_check() {
    let out = run_ok(&promtool(), &["check", "rules", "rules.yml"]);
    assert!(out.contains("SUCCESS: 25 rules found"), "{out}");
}

#[test]
fn rules_pass_their_unit_tests() {
    let out = run_ok(&promtool(), &["test", "rules", "rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn example_prometheus_config_is_valid() {
    // Also checks rules.yml, which the config loads.
    let out = run_ok(&promtool(), &["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
}

#[test]
fn example_alertmanager_config_is_valid() {
    run_ok(&amtool(), &["check-config", "alertmanager.yml"]);
}
