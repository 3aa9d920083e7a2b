#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the real tools the tests drive
# (Prometheus, promtool, Alertmanager, go tool pprof, Chromium, Python's prometheus_client),
# then formatting, lints,
# and every test in the workspace. `.ci/run` calls exactly this.
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

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The workspace build above unifies features, so a crate that breaks with a feature set a user
# can pick (observe-tower without axum, with tonic only, observe-actix without pprof) would go
# unseen: lint each library alone with each of its feature sets (every feature alone, and none).
step "cargo clippy, each feature set of each library"
for spec in observe-core: observe-core:runtime-metrics \
  observe-pprof: observe-pprof:jemalloc-heap-profile observe-pprof:taskdump \
  observe-tower: observe-tower:axum observe-tower:tonic observe-tower:pprof \
  observe-tower:jemalloc-heap-profile observe-tower:runtime-metrics observe-tower:taskdump \
  observe-actix: observe-actix:pprof observe-actix:jemalloc-heap-profile \
  observe-actix:runtime-metrics observe-actix:taskdump; do
  package=${spec%%:*}
  features=${spec#*:}
  echo "   $package --no-default-features ${features:+--features $features}"
  cargo clippy -q -p "$package" --no-default-features ${features:+--features "$features"} -- -D warnings
done
# `--cfg tokio_unstable` compiles code no other build sees (tokio's unstable metrics, the task
# dump, all in observe-core and observe-pprof): lint it and run its unit tests (further down),
# in a target directory of its own so the main build is not invalidated.
taskdump_target="${CARGO_TARGET_DIR:-target}/taskdump"
unstable_features="observe-core/runtime-metrics,observe-pprof/taskdump"
step "cargo clippy, --cfg tokio_unstable (in $taskdump_target)"
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$taskdump_target" \
  cargo clippy -q -p observe-core -p observe-pprof --all-targets --features "$unstable_features" \
  -- -D warnings
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps --all-features
step "build the examples the end-to-end tests start"
cargo build --workspace --bins
# integration-tests/tests/pprof_memory.rs measures what a profile costs a release build;
# load_and_faults.rs and slow_clients.rs put the release builds under load and hostile clients.
step "build the release examples the memory, load and slow-client tests run"
cargo build --release -p example-axum -p example-actix
# integration-tests/tests/runtime.rs dumps the tasks of examples built with tokio's task dump.
step "build the examples with tokio's task dump (--cfg tokio_unstable, in $taskdump_target)"
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$taskdump_target" \
  cargo build -p example-axum -p example-actix
step "cargo test, --cfg tokio_unstable: observe-core's and observe-pprof's unit tests (in $taskdump_target)"
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$taskdump_target" \
  cargo test -q -p observe-core -p observe-pprof --lib --features "$unstable_features"
step "cargo test"
cargo test --workspace
step "all passed"
