#!/usr/bin/env bash
# scripts/bench-lossy.sh — loss recovery of tlsgate's legs against the kernel's
# in the namespace lab: one HTTPS download per point through
#   kernel  tlsgate as a plain bridge (configs/lab.toml, nothing intercepted:
#           TCP is the end hosts' kernels, with SACK)
#   tls     tlsgate intercepting TLS on 443 (smoltcp legs, no SACK)
#   splice  tlsgate splicing 443 (smoltcp legs, TLS untouched)
# with the impairment element (scripts/lab-impair.sh) on LINK, the same spec
# both ways, for random loss 1% and 5% (with reordering, duplicates and
# corruption) and bursty loss (Gilbert-Elliott, `loss gemodel 1% 20%`).
#
# Usage: scripts/bench-lossy.sh [--link client|server] [--mb N] [--cc cubic|reno|none]
#   (root; run through `flock /tmp/tlsgate-lab.lock`). Prints one line per point:
#   path, impairment, MB/s (size / curl's time_total; at most 180 s) or "failed".
# Env: TLSGATE (default target/debug/tlsgate), TG_IMPAIR_BIN as lab-impair.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/lab-env.sh
[[ $(id -u) -eq 0 ]] || { echo "bench-lossy.sh: must run as root" >&2; exit 1; }

link=client mb=1 cc=cubic
while [[ $# -gt 0 ]]; do
  case "$1" in
    --link) link="$2"; shift 2 ;;
    --mb) mb="$2"; shift 2 ;;
    --cc) cc="$2"; shift 2 ;;
    *) echo "bench-lossy.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
tlsgate="${TLSGATE:-target/debug/tlsgate}"
work="$(mktemp -d /tmp/bench-lossy.XXXXXX)"
chmod 0755 "$work" # nginx's workers serve from under it
trap 'bash tests/lab/origin.sh stop "$work/origin" >/dev/null 2>&1 || true; bash scripts/lab-down.sh >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"$tlsgate" ca init --dir "$work/ca" >/dev/null
config() { # $1: mode (bridge|tls|splice)
  tg_lab_config configs/lab.toml >"$work/$1.toml"
  case "$1" in
    tls) printf '\n[intercept]\ntcp_ports = [443]\nmode = "tls"\n\n[tls]\nca_cert = "%s/ca/ca.pem"\nca_key = "%s/ca/ca.key"\nupstream_trust = "%s/origin/origin.crt"\n' \
           "$work" "$work" "$work" >>"$work/$1.toml" ;;
    splice) printf '\n[intercept]\ntcp_ports = [443]\nmode = "splice"\n' >>"$work/$1.toml" ;;
  esac
  printf '\n[tcp]\ncongestion_control = "%s"\n' "$cc" >>"$work/$1.toml"
  echo "$work/$1.toml"
}

point() { # $1: path, $2: impairment
  local mode=$1 spec=$2 cfg ca pid seconds
  case "$mode" in kernel) cfg="$(config bridge)" ;; *) cfg="$(config "$mode")" ;; esac
  bash scripts/lab-up.sh >/dev/null
  bash tests/lab/origin.sh start "$work/origin" >/dev/null
  head -c "$((mb * 1000000))" /dev/urandom >"$work/origin/www/bulk.bin"
  bash scripts/lab-impair.sh "$link" "$spec" "$spec"
  ip netns exec "$TG_NS_GW" "$tlsgate" run --config "$cfg" >"$work/tlsgate.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "tlsgate: running" "$work/tlsgate.log" 2>/dev/null && break; sleep 0.1; done
  ca="$work/origin/origin.crt"
  [[ "$mode" == tls ]] && ca="$work/ca/ca.pem"
  if seconds="$(ip netns exec "$TG_NS_CLI" curl -fsS --http1.1 --max-time 180 --cacert "$ca" \
      --resolve "origin.test:443:$TG_SRV_V4" -o /dev/null -w '%{time_total}' https://origin.test/bulk.bin 2>/dev/null)"; then
    printf '%-7s %-58s %8.2f MB/s\n' "$mode" "$spec" "$(echo "$mb / $seconds" | bc -l)"
  else
    printf '%-7s %-58s %8s\n' "$mode" "$spec" failed
  fi
  kill -INT "$pid"; wait "$pid" || true
  bash scripts/lab-impair.sh stop "$link"
  bash tests/lab/origin.sh stop "$work/origin" >/dev/null
}

echo "bench-lossy: ${mb} MB over HTTPS, impairment on the $link link both ways, congestion control $cc"
for spec in "delay 5ms loss 1%" \
            "delay 5ms loss 5% reorder 10% 2ms duplicate 1% corrupt 0.5%" \
            "delay 5ms loss gemodel 1% 20%"; do
  for mode in kernel tls splice; do point "$mode" "$spec"; done
done
