#!/usr/bin/env bash
# Server CPU per request of two builds (or settings) of an example, interleaved: wrk (one
# thread, 8 connections, 5 s) against each in turn, the server's CPU time from
# /proc/<pid>/stat, idle and while a CPU profile runs. Time on a shared machine moves between
# runs; CPU per request of two builds measured round by round does not move with it. Needs
# wrk (Debian `wrk`).
#
#   scripts/cpu-per-request.sh BEFORE AFTER [rounds] [path]
#
# BEFORE and AFTER are each a binary, optionally after environment settings:
#   scripts/cpu-per-request.sh "OBSERVE_HEAP_SAMPLE_BYTES=0 target/release/example-axum" \
#     target/release/example-axum
set -euo pipefail

before=$1
after=$2
rounds=${3:-4}
path=${4:-/users/1}
ticks=$(getconf CLK_TCK)

# One measurement: prints "µs of server CPU per request".
measure() {
  local command=$1 profiling=$2
  local port=$((20000 + RANDOM % 10000))
  # shellcheck disable=SC2086 # settings and binary, split on purpose
  env $command "127.0.0.1:$port" >/dev/null 2>&1 &
  local server=$!
  for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/users/1" >/dev/null && break
    sleep 0.1
  done
  local profile=""
  if [ "$profiling" = yes ]; then
    curl -s -o /dev/null "http://127.0.0.1:$port/debug/pprof/profile?seconds=7" &
    profile=$!
    sleep 0.5
  fi
  local cpu0 cpu1 requests
  cpu0=$(awk '{print $14 + $15}' "/proc/$server/stat")
  requests=$(wrk -t1 -c8 -d5s "http://127.0.0.1:$port$path" | awk '/requests in/ {print $1}')
  cpu1=$(awk '{print $14 + $15}' "/proc/$server/stat")
  [ -n "$profile" ] && wait "$profile"
  kill "$server"
  wait "$server" 2>/dev/null || true
  awk -v c=$((cpu1 - cpu0)) -v n="$requests" -v t="$ticks" 'BEGIN {printf "%.2f", c / t / n * 1e6}'
}

echo "round | before idle | after idle | before profiling | after profiling (µs of server CPU per request)"
for round in $(seq "$rounds"); do
  a=$(measure "$before" no)
  b=$(measure "$after" no)
  c=$(measure "$before" yes)
  d=$(measure "$after" yes)
  echo "$round | $a | $b | $c | $d"
done
