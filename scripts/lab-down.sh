#!/usr/bin/env bash
# scripts/lab-down.sh — tear down the tlsgate namespace lab. Never fails.
#
# Usage: scripts/lab-down.sh   (root)
# Kills every process running in tg-cli/tg-gw/tg-srv/tg-box/tg-sensor/tg-lg/tg-imp-* (TG_NS_IMP-*) (SIGTERM, then
# SIGKILL after ~2 s; that includes an inspection box started with
# scripts/inspect-box.sh), then deletes the namespaces, which also destroys the
# veth pairs and tg-box's bridge.
# Safe to run when the lab (or any part of it) does not exist.
set -uo pipefail
# shellcheck source=scripts/lab-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab-env.sh"

NSES=("$TG_NS_CLI" "$TG_NS_GW" "$TG_NS_SRV" "$TG_NS_BOX" "$TG_NS_SENSOR" "$TG_NS_LG")
# The impairment element's namespaces (scripts/lab-impair.sh).
for link in client server inspect-out inspect-in; do NSES+=("$TG_NS_IMP-$link"); done

ns_exists() { [[ -e "/run/netns/$1" ]] || ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
ns_pids() { ns_exists "$1" && ip netns pids "$1" 2>/dev/null; }

pids=()
for ns in "${NSES[@]}"; do
  while read -r p; do [[ -n "$p" ]] && pids+=("$p"); done < <(ns_pids "$ns" || true)
done
if ((${#pids[@]})); then
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 20); do
    alive=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    ((${#alive[@]})) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
fi

for ns in "${NSES[@]}"; do
  ns_exists "$ns" && ip netns del "$ns" 2>/dev/null
done
# A half-built lab could have left a veth end in the root namespace.
for ifc in "$TG_CLI_IF" "$TG_SRV_IF" "$TG_GWC_IF" "$TG_GWS_IF" \
           "$TG_GWIO_IF" "$TG_GWII_IF" "$TG_BOXO_IF" "$TG_BOXI_IF" "$TG_GWM_IF" "$TG_SENSOR_IF" impa0 impb0; do
  ip link show dev "$ifc" >/dev/null 2>&1 && ip link del dev "$ifc" 2>/dev/null
done
exit 0
