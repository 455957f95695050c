#!/usr/bin/env bash
# scripts/setup.sh — install every Debian 12 package tlsgate needs (build, lab, tests, demo).
#
# Usage: sudo scripts/setup.sh        (must run as root; idempotent)
#
# Also builds the Debian 13 chroot with Suricata the lab tests run
# (scripts/lab-suricata.sh install; reused once complete).
#
# Runs `apt-get update` + `apt-get install` only when something is missing, so a
# second run is quiet and fast. Ends with a one-line summary. Also checks that a
# Rust toolchain (cargo >= TG_MIN_RUST, default 1.91) is on PATH; Rust itself is
# never downloaded here — install it with rustup.
#
# Env:
#   TG_SETUP_SKIP_RUST=1   do not check for cargo (e.g. a pure packet-lab host)
#   TG_MIN_RUST=1.91       minimum cargo version accepted
set -euo pipefail

PACKAGES=(
  dpdk dpdk-dev libdpdk-dev      # DPDK 22.11 runtime, dpdk-testpmd, headers + pkg-config (libdpdk.pc)
  libclang-dev clang pkg-config  # bindgen for crates/dpdk-sys, the C shim for static-inline DPDK functions
  build-essential
  iproute2 ethtool iputils-ping  # the namespace/veth lab
  socat netcat-openbsd curl      # traffic generators for tests and the demo
  tcpdump tshark                 # capture / dissection in tests
  tcpflow ngrep                  # recorders of the lab's inspection box (scripts/inspect-box.sh)
  python3 python3-scapy          # scripts/gen-fixtures.py
  procps psmisc                  # pgrep/pkill/fuser used by lab scripts
  man-db                         # man -w in scripts/test-package.sh (the package's man pages)
  openssl nginx-light            # demo HTTPS origin (run inside tg-srv only)
  iperf3 apache2-utils           # scripts/bench-splice.sh (throughput, connection rate)
  nghttp2-client                 # h2load: HTTP/2 load through the appliance (lab tests)
  haproxy                        # a PROXY v2 backend of the termination mode (tests/lab/terminate-peers.sh)
  hitch stunnel4                 # the termination baselines of scripts/bench-terminate.sh
  chromium                       # headless browser through the appliance (lab tests)
  prometheus                     # promtool check metrics: the metrics endpoint's tests (the server stays off)
  debootstrap                    # the Debian 13 chroot holding Suricata (scripts/lab-suricata.sh install)
  # The STARTTLS peers of tests/lab/starttls-peers.sh (own instances in tg-srv; the host daemons stay off)
  postfix swaks                  # SMTP 25/587 STARTTLS, and its client; swaks --tls needs Net::SSLeay,
  libnet-ssleay-perl libio-socket-inet6-perl  # and IPv6 IO::Socket::INET6
  dovecot-imapd dovecot-pop3d    # IMAP 143 / POP3 110 STARTTLS
  prosody python3-slixmpp        # XMPP 5222 STARTTLS, and a real XMPP client library
  vsftpd                         # FTP 21 AUTH TLS
  postgresql                     # PostgreSQL 15 (5432, ssl = on); psql is its client
)
MIN_RUST="${TG_MIN_RUST:-1.91}"

die() { echo "setup.sh: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get install); try: sudo $0"
if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  die "this script supports Debian 12 (bookworm) only: dpkg/apt-get not found"
fi

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp /tmp/tlsgate-setup.XXXXXX.log)"
  run() { "$@" >>"$log" 2>&1 || { cat "$log" >&2; die "'$*' failed (log: $log)"; }; }

  echo "setup.sh: installing: ${missing[*]}"
  # tshark asks whether non-root users may capture; answer "no" up front.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | run debconf-set-selections
  # Postfix: "No configuration" (no /etc/postfix/main.cf, nothing delivered by
  # the host); the lab runs its own instance with its own config directory.
  echo "postfix postfix/main_mailer_type select No configuration" | run debconf-set-selections

  nginx_was_installed=0
  if is_installed nginx-light || is_installed nginx-core; then nginx_was_installed=1; fi
  # Packages whose system-wide daemon the project never uses (it runs its own
  # instances inside the lab namespaces): disabled below when newly installed.
  daemons_new=()
  for daemon in prometheus haproxy hitch postfix dovecot prosody vsftpd postgresql; do
    package="$daemon"
    [[ "$daemon" == dovecot ]] && package=dovecot-core
    is_installed "$package" || daemons_new+=("$daemon")
  done
  # No daemon starts while packages install: without a policy-rc.d of the host's
  # own, a temporary one answers "denied" (101) to invoke-rc.d and
  # deb-systemd-invoke, so postfix, dovecot, prosody, vsftpd and the
  # postgresql cluster never run on the host (the lab starts its own).
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# scripts/setup.sh: no service starts during its install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
  fi
  trap '((own_policy)) && rm -f "$policy"' EXIT

  run apt-get update -q
  run apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  ((own_policy)) && rm -f "$policy"
  trap - EXIT

  # The nginx package enables and (on a systemd host) starts a system-wide nginx
  # on port 80 in the root namespace. The project only ever runs its own nginx
  # inside tg-srv with a private config, so stop and disable the system one.
  if ((nginx_was_installed == 0)); then
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
      systemctl disable --now nginx.service >>"$log" 2>&1 || true
    else
      if [[ -x /etc/init.d/nginx ]]; then /etc/init.d/nginx stop >>"$log" 2>&1 || true; fi
      update-rc.d nginx disable >>"$log" 2>&1 || true
    fi
    if [[ -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
      kill "$(cat /run/nginx.pid)" 2>/dev/null || true
    fi
  fi
  # Likewise the prometheus package's own server (only promtool is used), the
  # system haproxy and hitch (the lab and bench-terminate.sh start their own)
  # and the STARTTLS servers (tests/lab/starttls-peers.sh runs its own
  # instances): stopped if something started them anyway, and disabled so no
  # boot starts them.
  for daemon in "${daemons_new[@]}"; do
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
      systemctl disable --now "$daemon.service" >>"$log" 2>&1 || true
    else
      if [[ -x "/etc/init.d/$daemon" ]]; then "/etc/init.d/$daemon" stop >>"$log" 2>&1 || true; fi
      update-rc.d "$daemon" disable >>"$log" 2>&1 || true
    fi
  done
  rm -f "$log"

  still=()
  for p in "${missing[@]}"; do is_installed "$p" || still+=("$p"); done
  ((${#still[@]} == 0)) || die "packages still missing after install: ${still[*]}"
fi

# Suricata is not packaged for Debian 12: the lab runs it from a Debian 13
# chroot, built once (about a minute) and reused.
bash "$(dirname "${BASH_SOURCE[0]}")/lab-suricata.sh" install

# --- Rust toolchain check (never installed from here) -----------------------
rust_note="cargo check skipped"
if [[ "${TG_SETUP_SKIP_RUST:-0}" != 1 ]]; then
  cargo_bin="$(command -v cargo || true)"
  if [[ -z "$cargo_bin" && -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    cargo_bin="${HOME:-/root}/.cargo/bin/cargo"
  fi
  [[ -n "$cargo_bin" ]] || die "cargo not found. Rust >= $MIN_RUST must be installed with rustup (https://rustup.rs), e.g. 'rustup toolchain install stable'; this script does not download it."
  ver="$("$cargo_bin" --version 2>/dev/null | awk '{print $2}')"
  [[ "$ver" =~ ^([0-9]+)\.([0-9]+) ]] || die "cannot parse '$cargo_bin --version' output ('$ver')"
  have_maj=${BASH_REMATCH[1]} have_min=${BASH_REMATCH[2]}
  want_maj=${MIN_RUST%%.*} want_min=${MIN_RUST#*.}; want_min=${want_min%%.*}
  if (( have_maj < want_maj || (have_maj == want_maj && have_min < want_min) )); then
    die "cargo $ver is too old; Rust >= $MIN_RUST is required. Update it with rustup ('rustup update stable'); this script does not download it."
  fi
  rust_note="cargo $ver OK"
fi

if ((${#missing[@]})); then
  echo "setup.sh: installed ${#missing[@]} package(s), all ${#PACKAGES[@]} present; $rust_note"
else
  echo "setup.sh: all ${#PACKAGES[@]} packages present; $rust_note"
fi
