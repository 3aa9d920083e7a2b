#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the real tools the tests drive
# (Prometheus, promtool, Alertmanager, go tool pprof, Chromium, Python's prometheus_client,
# cargo-nextest), then formatting, lints, and every test in the workspace. `.ci/run` calls
# exactly this.
#
# Three builds of the dependency graph, each used by every step that can share it:
#   target/          the dev profile: clippy's checks, then one build of every test and of
#                    the examples they start (dev-dependencies' features unified, so both
#                    share every artifact), the doc tests;
#   target/unstable  `--cfg tokio_unstable` (tokio's unstable metrics and task dump): the
#                    lint and unit tests of the two crates with such code, and the release
#                    examples that the load, memory, slow-client and task-dump tests run.
# Tests run with cargo-nextest, a process each, many at once (.config/nextest.toml keeps the
# ones that load or measure the machine apart).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's header says how long the suite has run: where CI's minutes go.
step() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

# Debian packages the tests need, keyed by the command that proves each is installed.
declare -A packages=(
  [promtool]=prometheus
  [prometheus]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [go]=golang-go
  [chromium]=chromium
)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "The tests need Debian packages that are not installed. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Python's prometheus_client: its OpenMetrics parser reads /metrics in
# integration-tests/tests/exemplars.rs.
if ! python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing prometheus_client (PyPI)"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'prometheus_client==0.26.0' ||
      python3 -m pip install -q --disable-pip-version-check --break-system-packages 'prometheus_client==0.26.0'
  else
    echo "The tests need Python's prometheus_client. Run:" >&2
    echo "  python3 -m pip install --user 'prometheus_client==0.26.0'" >&2
    exit 1
  fi
fi

# cargo-nextest runs the tests (it needs no root: cargo installs it into ~/.cargo/bin).
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest (crates.io)"
  cargo install --locked --quiet cargo-nextest
fi

target="${CARGO_TARGET_DIR:-target}"
unstable_target="$target/unstable"
unstable_features="observe-core/runtime-metrics,observe-pprof/taskdump"
# Runs cargo in the `--cfg tokio_unstable` build (its own target directory, so the main build
# is not invalidated).
unstable() { RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$unstable_target" cargo "$@"; }

step "cargo fetch"
cargo fetch --quiet
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The workspace build above unifies features, so a crate that breaks with a feature set a user
# can pick (observe-tower without axum, with tonic only, observe-actix without pprof) would go
# unseen: lint each library alone with each of its feature sets (every feature alone, and none).
step "cargo clippy, each feature set of each library"
for spec in observe-core: observe-core:runtime-metrics \
  observe-pprof: observe-pprof:taskdump \
  observe-tower: observe-tower:axum observe-tower:tonic observe-tower:pprof \
  observe-tower:runtime-metrics observe-tower:taskdump \
  observe-actix: observe-actix:pprof observe-actix:runtime-metrics observe-actix:taskdump; do
  package=${spec%%:*}
  features=${spec#*:}
  echo "   $package --no-default-features ${features:+--features $features}"
  cargo clippy -q -p "$package" --no-default-features ${features:+--features "$features"} -- -D warnings
done
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps --all-features
# One build for the tests and the binaries they start: built apart, the examples would get
# other features of shared dependencies (no dev-dependencies) and everything under them twice.
step "build every test and the examples the end-to-end tests start"
cargo build -q --workspace --tests --bins
# integration-tests/tests/pprof_memory.rs measures what a profile costs a release build;
# load_and_faults.rs and slow_clients.rs put the release builds under load and hostile
# clients; runtime.rs dumps their tasks, which needs `--cfg tokio_unstable`.
step "build the release examples, with tokio's task dump (in $unstable_target)"
unstable build -q --release -p example-axum -p example-actix
# `--cfg tokio_unstable` compiles code no other build sees (tokio's unstable metrics, the task
# dump, all in observe-core and observe-pprof): lint it, and run its unit tests.
step "cargo clippy, --cfg tokio_unstable (in $unstable_target)"
unstable clippy -q -p observe-core -p observe-pprof --all-targets --features "$unstable_features" \
  -- -D warnings
step "unit tests, --cfg tokio_unstable: observe-core and observe-pprof (in $unstable_target)"
unstable nextest run --no-fail-fast -p observe-core -p observe-pprof --lib --features "$unstable_features"
step "cargo nextest run"
cargo nextest run --workspace --no-fail-fast
step "doc tests"
cargo test -q --workspace --doc
step "all passed"
