#!/usr/bin/env bash
# CPU overhead of a running /debug/pprof CPU profile, measured as throughput under load:
# wrk against a release build of an example, once idle and once while a profile runs.
# Prints the figures docs/performance.md (## pprof) reports. Needs wrk (Debian `wrk`).
#
#   scripts/pprof-overhead.sh [example-axum|example-actix] [frequency] [rounds]
#
# OBSERVE_BINARY=path/to/example-axum measures that build instead of building one (e.g. two
# commits' builds, interleaved, to compare before and after).
set -euo pipefail
cd "$(dirname "$0")/.."

package=${1:-example-axum}
frequency=${2:-99}
rounds=${3:-3}
target=${CARGO_TARGET_DIR:-target}
port=$((20000 + RANDOM % 10000))

binary=${OBSERVE_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release -q -p "$package"
  binary="$target/release/$package"
fi
"$binary" "127.0.0.1:$port" >/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/users/1" >/dev/null && break
  sleep 0.1
done

url="http://127.0.0.1:$port/users/1"
seconds=${SECONDS_PER_RUN:-10}
clk=$(getconf CLK_TCK)
# Server CPU time (user + system) in clock ticks, from /proc.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }
# One wrk run: prints "req/s cpu_us_per_request".
measure() {
  local before after out
  before=$(cpu_ticks)
  out=$(wrk -t2 -c32 -d"${seconds}s" "$url")
  after=$(cpu_ticks)
  awk -v t0="$before" -v t1="$after" -v clk="$clk" -v s="$seconds" '
    /Requests\/sec/ { rps = $2 }
    END { printf "%.0f %.2f\n", rps, (t1 - t0) / clk * 1e6 / (rps * s) }' <<<"$out"
}
# Warm up: route table, allocator, and the first profile's symbol cache.
wrk -t2 -c32 -d3s "$url" >/dev/null
curl -sf -o /dev/null "http://127.0.0.1:$port/debug/pprof/profile?seconds=1"

echo "package=$package frequency=${frequency}Hz cpus=$(nproc) wrk -t2 -c32 -d${seconds}s $url"
results=$(mktemp)
for round in $(seq "$rounds"); do
  read -r idle idle_cpu < <(measure)
  curl -sf -o /dev/null \
    "http://127.0.0.1:$port/debug/pprof/profile?seconds=$((seconds + 1))&frequency=$frequency" &
  profile=$!
  sleep 0.5  # the profile is running before wrk starts, and outlasts it
  read -r prof prof_cpu < <(measure)
  wait "$profile"
  echo "$idle $idle_cpu $prof $prof_cpu" >>"$results"
  awk -v r="$round" -v a="$idle" -v ac="$idle_cpu" -v b="$prof" -v bc="$prof_cpu" 'BEGIN {
    printf "round %d: idle %6.0f req/s (%5.2f us CPU/req)  profiling %6.0f req/s (%5.2f us CPU/req)  throughput %+5.1f%%\n",
      r, a, ac, b, bc, (b - a) / a * 100 }'
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mi=$(cut -d' ' -f1 "$results" | median); mic=$(cut -d' ' -f2 "$results" | median)
mp=$(cut -d' ' -f3 "$results" | median); mpc=$(cut -d' ' -f4 "$results" | median)
awk -v a="$mi" -v ac="$mic" -v b="$mp" -v bc="$mpc" 'BEGIN {
  printf "median: idle %.0f req/s (%.2f us CPU/req), profiling %.0f req/s (%.2f us CPU/req): throughput %+.1f%%, CPU per request %+.1f%%\n",
    a, ac, b, bc, (b - a) / a * 100, (bc - ac) / ac * 100 }'
rm -f "$results"
