#!/usr/bin/env bash
# What continuous profiling costs a service, in server CPU time per request under wrk load
# (from /proc), in its two parts:
#
# 1. Sampling: the SIGPROF handler on the threads it interrupts. Measured in one process,
#    alternating windows without and with the sampler running (an on-demand profile uses the
#    same sampler at the same 99 Hz): scripts/pprof-overhead.sh. Comparing two processes
#    instead does not work here: two processes of the same binary differ by ±12 % (an A/A
#    run of the earlier two-process version of this script measured -12.6 %).
# 2. Draining, symbolizing, encoding and pushing: observe's own threads (`observe-pprof`,
#    `observe-pyrosco`), read from /proc/PID/task while the service pushes every 10 s to a
#    local sink that answers 200 to every POST.
#
# Needs wrk (Debian `wrk`) and python3. Prints the figures docs/performance.md reports.
#
#   scripts/continuous-profiling-overhead.sh [example-axum|example-actix] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

package=${1:-example-axum}
rounds=${2:-5}
target=${CARGO_TARGET_DIR:-target}
seconds=${SECONDS_PER_RUN:-30}

echo "== 1. sampling at 99 Hz, in one process"
SECONDS_PER_RUN=10 scripts/pprof-overhead.sh "$package" 99 "$rounds"

echo "== 2. observe's threads while pushing every 10 s"
sink_port=$((30000 + RANDOM % 5000))
python3 - "$sink_port" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
sink=$!
port=$((20000 + RANDOM % 10000))
OBSERVE_PYROSCOPE_URL="http://127.0.0.1:$sink_port" "$target/release/$package" "127.0.0.1:$port" >/dev/null &
server=$!
trap 'kill "$sink" "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/users/1" >/dev/null && break; sleep 0.1; done
wrk -t2 -c32 -d3s "http://127.0.0.1:$port/users/1" >/dev/null
# CPU ticks (user + system) of the process and of observe's threads.
ticks() {
  local all=0 ours=0 t
  for t in /proc/"$server"/task/*; do
    local n
    n=$(awk '{ print $14 + $15 }' "$t/stat")
    all=$((all + n))
    case $(cat "$t/comm") in observe-*) ours=$((ours + n)) ;; esac
  done
  echo "$all $ours"
}
read -r all0 ours0 < <(ticks)
out=$(wrk -t2 -c32 -d"${seconds}s" "http://127.0.0.1:$port/users/1")
read -r all1 ours1 < <(ticks)
clk=$(getconf CLK_TCK)
awk -v a0="$all0" -v a1="$all1" -v o0="$ours0" -v o1="$ours1" -v clk="$clk" -v s="$seconds" '
  /Requests\/sec/ { rps = $2 }
  END {
    printf "%.0f req/s, %.3f us CPU/request, of which observe'"'"'s threads %.4f us (%.2f %% of the process CPU)\n",
      rps, (a1 - a0) / clk * 1e6 / (rps * s), (o1 - o0) / clk * 1e6 / (rps * s), (o1 - o0) / (a1 - a0) * 100 }' <<<"$out"
