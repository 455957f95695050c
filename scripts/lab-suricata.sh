#!/usr/bin/env bash
# scripts/lab-suricata.sh — Suricata in the namespace lab.
#
# Debian 12 has no suricata package, Debian 13 (trixie) has. Installing
# trixie packages on the bookworm host would pull in a newer libc, so
# Suricata lives in a trixie chroot of its own (debootstrap minbase, about
# 400 MB, built once and reused) and runs from there inside the lab's
# namespaces: af-packet works through a chroot, the network namespace is the
# process's.
#
# Usage (root):
#   lab-suricata.sh install
#       Build the chroot ROOT (default /var/cache/tlsgate-lab/suricata-root)
#       with suricata in it. Idempotent: a complete chroot carries the stamp
#       ROOT/.tlsgate-suricata; a partial one (interrupted build) is removed
#       and rebuilt. Needs debootstrap (scripts/setup.sh installs it) and
#       deb.debian.org.
#   lab-suricata.sh start-ips DIR RULES
#       Inline IPS in the inspection box namespace (tg-box): af-packet
#       copy-mode ips between boxo0 and boxi0, so every frame of the
#       inspection loop crosses Suricata, which drops what a "drop" rule of
#       the file RULES matches. Logs (eve.json with community_id, fast.log,
#       suricata.log) go to DIR/log. Returns once the engine has started.
#   lab-suricata.sh start-passive DIR RULES
#       Passive af-packet sensor on the decrypt-mirror port (tg-sensor/sens0).
#   lab-suricata.sh pcap DIR RULES FILE.pcap
#       Run Suricata over a capture (-r) to the end; logs in DIR/log.
#   lab-suricata.sh stop DIR
#       Stop the Suricata started with DIR (SIGTERM, then SIGKILL after 10 s)
#       and undo the chroot's mounts.
#
# Configuration: tests/lab/suricata.yaml (small, commented) plus the
# af-packet section this script writes to DIR/af-packet.yaml. DIR is
# bind-mounted at ROOT/lab while Suricata runs (one Suricata at a time: the
# lab is exclusive). Env: TG_SURICATA_ROOT, TG_DEBIAN_MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lab-env.sh
. "$here/lab-env.sh"

ROOT="${TG_SURICATA_ROOT:-/var/cache/tlsgate-lab/suricata-root}"
MIRROR="${TG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STAMP="$ROOT/.tlsgate-suricata"
CONFIG="$(cd "$here/.." && pwd)/tests/lab/suricata.yaml"

die() { echo "lab-suricata.sh: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage/,/^#       and undo/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

install_root() {
  if [[ -f "$STAMP" ]]; then
    echo "lab-suricata.sh: $(cat "$STAMP") in $ROOT"
    return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap missing (scripts/setup.sh installs it)"
  unmount_all
  # Never remove through a mount (DIR bind-mounted at ROOT/lab).
  ! grep -q " $ROOT/" /proc/mounts || die "something is still mounted under $ROOT"
  rm -rf "$ROOT"
  mkdir -p "$(dirname "$ROOT")"
  local log started=$SECONDS
  log="$(mktemp /tmp/tlsgate-suricata-install.XXXXXX.log)"
  echo "lab-suricata.sh: building a Debian 13 chroot with suricata in $ROOT (log $log)"
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >>"$log" 2>&1 ||
    { tail -20 "$log" >&2; die "debootstrap failed (log $log)"; }
  DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -q --no-install-recommends suricata \
    >>"$log" 2>&1 || { tail -20 "$log" >&2; die "apt-get install suricata in the chroot failed (log $log)"; }
  chroot "$ROOT" apt-get clean >>"$log" 2>&1 || true
  mkdir -p "$ROOT/lab"
  chroot "$ROOT" suricata -V >"$STAMP"
  rm -f "$log"
  echo "lab-suricata.sh: $(cat "$STAMP") installed in $ROOT in $((SECONDS - started)) s"
}

need_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  [[ -f "$STAMP" ]] || die "no Suricata chroot in $ROOT (run: $0 install)"
}

mounted() { mountpoint -q "$1"; }

unmount_all() {
  local m
  for m in "$ROOT/lab" "$ROOT/proc"; do
    if [[ -d "$m" ]] && mounted "$m"; then umount "$m" || umount -l "$m"; fi
  done
}

# mount_dir DIR: DIR at ROOT/lab, /proc at ROOT/proc.
mount_dir() {
  local dir="$1"
  unmount_all
  mkdir -p "$dir/log" "$ROOT/lab"
  mount --bind "$dir" "$ROOT/lab"
  mount -t proc proc "$ROOT/proc"
}

# prepare DIR RULES: config and rules into DIR, old logs removed.
prepare() {
  local dir="$1" rules="$2"
  [[ -r "$rules" ]] || die "cannot read rules file $rules"
  mkdir -p "$dir"
  stop_dir "$dir" quiet
  rm -rf "$dir/log"
  mkdir -p "$dir/log"
  cp "$CONFIG" "$dir/suricata.yaml"
  cp "$rules" "$dir/lab.rules"
}

# af_packet_entry IFACE PEER CLUSTER_ID: one af-packet entry; IPS towards
# PEER unless it is empty (passive).
af_packet_entry() {
  local ifc="$1" peer="${2:-}" cluster="$3"
  echo "  - interface: $ifc"
  echo "    threads: 1"
  echo "    cluster-id: $cluster"
  echo "    cluster-type: cluster_flow"
  echo "    defrag: no"
  echo "    use-mmap: yes"
  # IPS needs TPACKET_V2 (frame by frame); the lab's veths carry real
  # checksums (offloads off), but checking them would only lose frames.
  echo "    tpacket-v3: no"
  echo "    checksum-checks: no"
  if [[ -n "$peer" ]]; then
    echo "    copy-mode: ips"
    echo "    copy-iface: $peer"
  fi
}

alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# start NAMESPACE DIR: Suricata (af-packet, DIR/af-packet.yaml) in the
# background in NAMESPACE; waits for "Engine started". Run mode "workers":
# one thread per interface doing everything (capture, decode, detect,
# verdict), the af-packet IPS run mode.
start() {
  local ns="$1" dir="$2" pid
  mount_dir "$dir"
  setsid ip netns exec "$ns" chroot "$ROOT" suricata -c /lab/suricata.yaml \
    --include /lab/af-packet.yaml -S /lab/lab.rules -l /lab/log --af-packet --runmode workers \
    </dev/null >"$dir/suricata.out" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/suricata.pid"
  wait_for 60 eval "grep -q 'Engine started' '$dir/suricata.out' || ! alive $pid" || true
  if ! alive "$pid" || ! grep -q 'Engine started' "$dir/suricata.out"; then
    cat "$dir/suricata.out" >&2
    stop_dir "$dir" quiet
    die "suricata did not start in $ns"
  fi
}

stop_dir() {
  local dir="$1" quiet="${2:-}" pid=""
  [[ -s "$dir/suricata.pid" ]] && pid="$(cat "$dir/suricata.pid")"
  if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 10 eval "! alive $pid" || kill -KILL "$pid" 2>/dev/null || true
    wait_for 2 eval "! alive $pid" || true
  fi
  rm -f "$dir/suricata.pid"
  unmount_all
  [[ -n "$quiet" ]] || echo "lab-suricata.sh: suricata stopped (logs in $dir/log)"
}

links_up() {
  local ns="$1" ifc; shift
  for ifc; do
    ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"
    tg_offloads_off "$ns" "$ifc"
    ip -n "$ns" link set dev "$ifc" up
  done
}

action="${1:-}"
case "$action" in
install)
  [[ $# -eq 1 ]] || usage
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  install_root ;;
start-ips)
  [[ $# -eq 3 ]] || usage
  need_root
  prepare "$2" "$3"
  # Nothing else may forward between the ports: a bridge of inspect-box.sh
  # would pass what Suricata drops.
  ! ip -n "$TG_NS_BOX" link show dev br0 >/dev/null 2>&1 || die "a bridge box runs in $TG_NS_BOX: inspect-box.sh stop it first"
  links_up "$TG_NS_BOX" "$TG_BOXO_IF" "$TG_BOXI_IF"
  {
    echo "%YAML 1.1"
    echo "---"
    echo "af-packet:"
    af_packet_entry "$TG_BOXO_IF" "$TG_BOXI_IF" 98
    af_packet_entry "$TG_BOXI_IF" "$TG_BOXO_IF" 99
  } >"$2/af-packet.yaml"
  start "$TG_NS_BOX" "$2"
  echo "lab-suricata.sh: inline IPS in $TG_NS_BOX ($TG_BOXO_IF <-> $TG_BOXI_IF); logs in $2/log" ;;
start-passive)
  [[ $# -eq 3 ]] || usage
  need_root
  prepare "$2" "$3"
  links_up "$TG_NS_SENSOR" "$TG_SENSOR_IF"
  {
    echo "%YAML 1.1"
    echo "---"
    echo "af-packet:"
    af_packet_entry "$TG_SENSOR_IF" "" 97
  } >"$2/af-packet.yaml"
  start "$TG_NS_SENSOR" "$2"
  echo "lab-suricata.sh: passive sensor on $TG_NS_SENSOR/$TG_SENSOR_IF; logs in $2/log" ;;
pcap)
  [[ $# -eq 4 ]] || usage
  need_root
  prepare "$2" "$3"
  cp "$4" "$2/input.pcap"
  printf '%%YAML 1.1\n---\n' >"$2/af-packet.yaml"
  mount_dir "$2"
  status=0
  chroot "$ROOT" suricata -c /lab/suricata.yaml -S /lab/lab.rules -l /lab/log -r /lab/input.pcap \
    >"$2/suricata.out" 2>&1 || status=$?
  unmount_all
  ((status == 0)) || { cat "$2/suricata.out" >&2; die "suricata -r failed ($status)"; }
  echo "lab-suricata.sh: read $4; logs in $2/log" ;;
stop)
  [[ $# -eq 2 ]] || usage
  stop_dir "$2" ;;
*) usage ;;
esac
