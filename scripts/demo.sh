#!/usr/bin/env bash
# scripts/demo.sh — the end-to-end demo: tlsgate inline between a client and an
# HTTPS origin in a throw-away namespace lab, bridging everything,
# intercepting TLS on port 443 with certificates forged by its own CA, sending
# the plaintext through an inspection box and writing a decrypted capture.
#
# Usage: sudo bash scripts/demo.sh       (root: namespaces, DPDK, apt)
#
# Steps: setup.sh -> cargo build --release -p tlsgate -> lab-up.sh -> HTTPS
# origin (tests/lab/origin.sh: nginx in tg-srv, self-signed cert for
# origin.test, 1 MiB file) -> inspection box in tg-box (scripts/inspect-box.sh
# bridge: a Linux bridge with tcpflow recording) -> `tlsgate ca init` ->
# config = configs/lab-inspect.toml + [intercept]/[tls]/[capture]/[log] ->
# `tlsgate check` -> `tlsgate run` in tg-gw ->
#   1. IPv4/IPv6 ping: bridged, not intercepted
#   2. curl trusting the tlsgate CA: HTTP/2 over IPv4, HTTP/1.1 over IPv6,
#      SHA-256 compared with the origin's file
#   3. what the inspection box recorded: the plaintext request and response
#   4. the certificate the client saw (openssl s_client) next to the origin's:
#      same subject and names, issued by the tlsgate CA
#   5. curl trusting only the origin's own certificate: rejected (exit 60)
#   6. the box blocking by content: a request with a marker is reset; then
#      Suricata (scripts/lab-suricata.sh) as an inline IPS drops another
#   7. once every flow is freed (TIME-WAIT, ~10 s), SIGINT to tlsgate: final
#      counters, JSON report, tls_intercepted >= 3, connections inspected
#   8. the decrypted capture read by tshark as HTTP (copied to
#      /tmp/tlsgate-demo-decrypted.pcap for Wireshark)
#   9. the termination mode (stud on the wire, demo_termination): the
#      origin replaced by a plaintext nginx backend reading PROXY v2
#      (tests/lab/terminate-peers.sh, with its own lab PKI), tlsgate restarted
#      with a [[service]] for www.lab.test: curl trusting only the lab root
#      gets the service's own chain, the body byte-exact over IPv4 and IPv6,
#      and nginx's log shows the client's address from the PROXY header
# Whatever happens, an EXIT trap stops tlsgate and nginx and runs lab-down.sh.
#
# Environment (all optional):
#   TG_DEMO_SKIP_SETUP=1   do not run scripts/setup.sh
#   TG_DEMO_SKIP_BUILD=1   do not run cargo build (use an existing binary)
#   TLSGATE_BIN=PATH       binary to run (default ${CARGO_TARGET_DIR:-target}/release/tlsgate)
#   TG_DEMO_CONFIG=PATH    base config, without [intercept]/[tls] (default
#                          configs/lab-inspect.toml); the demo appends those sections
#   TG_DEMO_KEEP=1         keep the temp dir (logs, CA, certs, config, report)
#                          even on success
#   TG_DEMO_READY_TIMEOUT=30  seconds to wait for tlsgate's "tlsgate: running" line
#   TG_NS_CLI/TG_NS_GW/TG_NS_SRV  namespace names (see lab-env.sh), e.g. to run
#                          beside another lab user; configs/lab.toml still fits
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lab-env.sh disable=SC1091
. scripts/lab-env.sh   # exports TG_*, so tests/lab/origin.sh sees the same lab

BASE_CONFIG="${TG_DEMO_CONFIG:-configs/lab-inspect.toml}"
BIN="${TLSGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/tlsgate}"
READY_TIMEOUT="${TG_DEMO_READY_TIMEOUT:-30}"
NAME=origin.test

step=0
say()  { printf '\n\033[1m==> [%d] %s\033[0m\n' "$((++step))" "$*"; }
info() { printf '    %s\n' "$*"; }
show() { sed '/^[[:space:]]*$/d; s/^/    | /'; }   # indent command output
fail() { printf '\n\033[1;31mdemo.sh: FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "must run as root (network namespaces, DPDK): sudo bash $0"
[[ -f "$BASE_CONFIG" ]] || fail "no base config at $BASE_CONFIG (TG_DEMO_CONFIG)"
if grep -Eq '^[[:space:]]*\[(intercept|tls)\]' "$BASE_CONFIG"; then
  fail "$BASE_CONFIG already has an [intercept] or [tls] section; the demo adds its own"
fi

TMP="$(mktemp -d /tmp/tlsgate-demo.XXXXXX)"
chmod 0755 "$TMP"   # nginx workers (not root) must reach the document root
ORIGIN="$TMP/origin" CA="$TMP/ca" CONFIG="$TMP/tlsgate.toml" REPORT="$TMP/report.json"
BOX="$TMP/box" CAPTURE="$TMP/decrypted.pcap" KEPT_CAPTURE=/tmp/tlsgate-demo-decrypted.pcap
SURICATA="$TMP/suricata" SURICATA_STARTED=0
PEERS="$TMP/peers" PEERS_STARTED=0
TG_PID="" ORIGIN_STARTED=0 OK=0

cleanup() {
  local rc=$?
  set +e
  trap - INT TERM
  if [[ -n "$TG_PID" ]] && kill -0 "$TG_PID" 2>/dev/null; then
    kill -INT "$TG_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$TG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TG_PID" 2>/dev/null
  fi
  ((ORIGIN_STARTED)) && bash "$ROOT/tests/lab/origin.sh" stop "$ORIGIN"
  ((PEERS_STARTED)) && bash "$ROOT/tests/lab/terminate-peers.sh" stop "$PEERS"
  bash "$ROOT/scripts/inspect-box.sh" stop "$BOX" >/dev/null 2>&1
  ((SURICATA_STARTED)) && bash "$ROOT/scripts/lab-suricata.sh" stop "$SURICATA" >/dev/null 2>&1
  "$ROOT/scripts/lab-down.sh"   # also kills anything else left in the namespaces
  if ((OK)) && [[ "${TG_DEMO_KEEP:-0}" != 1 ]]; then
    rm -rf "$TMP"
  else
    echo "demo.sh: logs and files kept in $TMP" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
if [[ "${TG_DEMO_SKIP_SETUP:-0}" != 1 ]]; then
  say "Installing/checking Debian packages (scripts/setup.sh)"
  if [[ "${TG_DEMO_SKIP_BUILD:-0}" == 1 ]]; then  # no cargo needed
    TG_SETUP_SKIP_RUST=1 scripts/setup.sh || fail "scripts/setup.sh failed"
  else
    scripts/setup.sh || fail "scripts/setup.sh failed"
  fi
fi
for tool in ip curl openssl nginx haproxy python3 sha256sum ss timeout tcpflow tshark; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (run scripts/setup.sh)"
done

if [[ "${TG_DEMO_SKIP_BUILD:-0}" != 1 ]]; then
  say "Building tlsgate (cargo build --release -p tlsgate)"
  CARGO="$(command -v cargo || echo "${HOME:-/root}/.cargo/bin/cargo")"
  [[ -x "$CARGO" ]] || fail "cargo not found: install Rust with rustup (or set TG_DEMO_SKIP_BUILD=1 and TLSGATE_BIN)"
  "$CARGO" build --release -p tlsgate || fail "cargo build --release -p tlsgate failed"
fi
[[ -x "$BIN" ]] || fail "no tlsgate binary at $BIN (build it, or set TLSGATE_BIN)"

say "Creating the namespace lab (scripts/lab-up.sh)"
scripts/lab-up.sh | show || fail "scripts/lab-up.sh failed"
info "nothing bridges $TG_GWC_IF<->$TG_GWS_IF yet, so the client cannot reach the server:"
if ip netns exec "$TG_NS_CLI" ping -c1 -W1 "$TG_SRV_V4" >/dev/null 2>&1; then
  fail "ping $TG_SRV_V4 succeeded before tlsgate was started: the lab is not isolated"
fi
info "ping $TG_SRV_V4: no answer (as expected)"

# ---------------------------------------------------------------------------
say "Starting the HTTPS origin in $TG_NS_SRV (tests/lab/origin.sh: nginx, HTTP/1.1 + HTTP/2)"
ORIGIN_STARTED=1
bash tests/lab/origin.sh start "$ORIGIN" || fail "tests/lab/origin.sh could not start nginx in $TG_NS_SRV"
want_sha="$(sha256sum "$ORIGIN/www/file.bin" | cut -d' ' -f1)"
info "nginx listening on $TG_SRV_V4:443 and [$TG_SRV_V6]:443 as $NAME"
info "served file: /file.bin, $(stat -c %s "$ORIGIN/www/file.bin") bytes, sha256 $want_sha"
info "the origin's own certificate ($ORIGIN/origin.crt, self-signed):"
openssl x509 -in "$ORIGIN/origin.crt" -noout -subject -issuer -fingerprint -sha256 | show
origin_subject="$(openssl x509 -in "$ORIGIN/origin.crt" -noout -subject)"
origin_issuer="$(openssl x509 -in "$ORIGIN/origin.crt" -noout -issuer)"
origin_fp="$(openssl x509 -in "$ORIGIN/origin.crt" -noout -fingerprint -sha256)"

# ---------------------------------------------------------------------------
say "Starting the inspection box in $TG_NS_BOX: a Linux bridge with tcpflow recording (scripts/inspect-box.sh bridge)"
bash scripts/inspect-box.sh bridge "$BOX" | show || fail "scripts/inspect-box.sh bridge failed"
info "tlsgate will send every intercepted connection's plaintext out of $TG_GWIO_IF (inspect_out),"
info "through this box, and take it back on $TG_GWII_IF (inspect_in) before re-encrypting it"

# ---------------------------------------------------------------------------
say "Creating the appliance CA: tlsgate ca init --dir $CA"
"$BIN" ca init --dir "$CA" >"$TMP/ca-init.log" 2>&1 || { show <"$TMP/ca-init.log" >&2; fail "tlsgate ca init failed"; }
show <"$TMP/ca-init.log"
[[ -s "$CA/ca.pem" && -s "$CA/ca.key" ]] || fail "tlsgate ca init did not create $CA/ca.pem and $CA/ca.key"
ca_subject="$(openssl x509 -in "$CA/ca.pem" -noout -subject)"

say "Writing and checking the config: $BASE_CONFIG + [intercept] + [tls] -> $CONFIG"
{
  tg_lab_config "$BASE_CONFIG"
  cat <<EOF

# --- added by scripts/demo.sh ---
[intercept]
tcp_ports = [443]
mode = "tls"

[tls]
ca_cert = "$CA/ca.pem"
ca_key = "$CA/ca.key"
upstream_trust = "$ORIGIN/origin.crt"   # the appliance trusts the lab origin's self-signed cert

[capture]
path = "$CAPTURE"          # the plaintext as a pcap with synthetic TCP framing
port_map = { 443 = 80 }    # so analysers dissect it as HTTP

[log]
connections = "$TMP/connections.jsonl"
EOF
} >"$CONFIG"
sed -n '/^# --- added by scripts\/demo.sh ---$/,$p' "$CONFIG" | tail -n +2 | sed 's/^/    | /'
info "tlsgate check --config $CONFIG:"
"$BIN" check --config "$CONFIG" >"$TMP/check.log" 2>&1 || { show <"$TMP/check.log"; fail "tlsgate check rejected $CONFIG"; }
show <"$TMP/check.log"

# ---------------------------------------------------------------------------
say "Starting tlsgate in $TG_NS_GW: $BIN run --config $CONFIG --report-json $REPORT --stats-interval 1"
# `tlsgate run` in the appliance namespace ($TG_PID), waiting for "tlsgate: running".
start_appliance() {  # config report log
  local config="$1" report="$2" log="$3"
  # Job control on: a background job of a script otherwise starts with SIGINT
  # ignored, and tlsgate is stopped (and prints its counters) on SIGINT.
  set -m
  ip netns exec "$TG_NS_GW" "$BIN" run --config "$config" --report-json "$report" --stats-interval 1 >"$log" 2>&1 &
  TG_PID=$!
  set +m
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -q '^tlsgate: running' "$log" && break
    if ! kill -0 "$TG_PID" 2>/dev/null; then
      show <"$log" >&2
      fail "tlsgate exited before it was running (log above)"
    fi
    sleep 0.1
  done
  if ! grep -q '^tlsgate: running' "$log"; then
    show <"$log" >&2
    fail "tlsgate did not print 'tlsgate: running' within ${READY_TIMEOUT}s (log above)"
  fi
  grep '^tlsgate: running' "$log" | head -1 | show
}
start_appliance "$CONFIG" "$REPORT" "$TMP/tlsgate.log"

# ---------------------------------------------------------------------------
say "Ping client -> server through tlsgate: bridged frame by frame, not intercepted"
# The isolation check's ARP request may still be unresolved (the kernel tries
# for 3 s, then fails every packet queued behind it): start afresh.
ip -n "$TG_NS_CLI" neigh flush dev "$TG_CLI_IF"
ip netns exec "$TG_NS_CLI" ping -c3 -i0.2 -W2 "$TG_SRV_V4" | tail -2 | show \
  || fail "IPv4 ping $TG_CLI_V4 -> $TG_SRV_V4 through tlsgate failed"
ip netns exec "$TG_NS_CLI" ping -6 -c3 -i0.2 -W2 "$TG_SRV_V6" | tail -2 | show \
  || fail "IPv6 ping $TG_CLI_V6 -> $TG_SRV_V6 through tlsgate failed"
ip netns exec "$TG_NS_CLI" ping -c2 -i0.2 -W2 -s 1472 -M "do" "$TG_SRV_V4" >/dev/null \
  || fail "1500-byte IPv4 packets (DF) do not cross tlsgate"
info "ARP, neighbour discovery, ICMP and full-size frames (1472-byte ping, DF) cross"
info "unchanged: only new TCP connections to port 443 are intercepted"

# ---------------------------------------------------------------------------
say "HTTPS through tlsgate: curl in $TG_NS_CLI trusts only the tlsgate CA ($CA/ca.pem)"
fetch() {  # fetch <label> <address for --resolve> <curl http option> <expected http_version>
  local label="$1" addr="$2" opt="$3" want_ver="$4" out="$TMP/download-$1.bin" line got ver
  line="$(ip netns exec "$TG_NS_CLI" curl -sS --fail --max-time 30 "$opt" --cacert "$CA/ca.pem" \
    --resolve "$NAME:443:$addr" -o "$out" \
    -w '%{http_version} %{http_code} %{size_download} %{time_total} %{ssl_verify_result} %{remote_ip}' \
    "https://$NAME/file.bin")" || fail "curl $opt over $label (--cacert ca.pem) failed"
  read -r ver code size secs verify rip <<<"$line"
  info "$label: HTTP/$ver $code, $size bytes in ${secs}s from $rip, certificate verified against the tlsgate CA (result $verify)"
  [[ "$ver" == "$want_ver" ]] || fail "$label: curl spoke HTTP/$ver, expected HTTP/$want_ver"
  got="$(sha256sum "$out" | cut -d' ' -f1)"
  [[ "$got" == "$want_sha" ]] || fail "$label download is corrupt: sha256 $got != $want_sha"
  info "$label: sha256 $got = the origin's file"
}
fetch ipv4 "$TG_SRV_V4" --http2 2
fetch ipv6 "[$TG_SRV_V6]" --http1.1 1.1
info "the origin's access log (it talked to the client's own addresses):"
tail -n 2 "$ORIGIN/access.log" | show

# ---------------------------------------------------------------------------
say "What the inspection box saw: tcpflow's recordings in $BOX/flows (a stock tool, plaintext)"
sleep 0.5
ls -l "$BOX/flows" | tail -n +2 | show
request_file="$(grep -l '^GET /file.bin HTTP/1.1' "$BOX"/flows/* 2>/dev/null | head -1)"
[[ -n "$request_file" ]] || fail "the box recorded no plaintext HTTP/1.1 request for /file.bin"
info "the HTTP/1.1 request, as the box received it ($(basename "$request_file")):"
head -c 400 "$request_file" | tr -d '\r' | show
response_file="$(grep -l '^HTTP/1.1 200 OK' "$BOX"/flows/* 2>/dev/null | head -1)"
[[ -n "$response_file" ]] || fail "the box recorded no plaintext HTTP/1.1 response"
info "the start of the response ($(stat -c %s "$response_file") bytes recorded):"
head -n 6 "$response_file" | tr -d '\r' | show
info "(the HTTP/2 session over IPv4 is there too, as HTTP/2 frames)"

# ---------------------------------------------------------------------------
say "What the client saw: openssl s_client -connect $TG_SRV_V4:443 -servername $NAME -alpn h2,http/1.1"
echo | timeout 15 ip netns exec "$TG_NS_CLI" openssl s_client -connect "$TG_SRV_V4:443" \
  -servername "$NAME" -alpn h2,http/1.1 -CAfile "$CA/ca.pem" >"$TMP/s_client.log" 2>&1 || true
if ! grep -q 'BEGIN CERTIFICATE' "$TMP/s_client.log"; then
  show <"$TMP/s_client.log" >&2
  fail "openssl s_client got no certificate from $TG_SRV_V4:443 (output above)"
fi
grep -E '^(subject|issuer)=|^ALPN protocol|^New, |Verify return code' "$TMP/s_client.log" | show
openssl x509 -in "$TMP/s_client.log" -out "$TMP/forged.crt" 2>/dev/null \
  || fail "cannot parse the certificate s_client received"
forged_subject="$(openssl x509 -in "$TMP/forged.crt" -noout -subject)"
forged_issuer="$(openssl x509 -in "$TMP/forged.crt" -noout -issuer)"
forged_fp="$(openssl x509 -in "$TMP/forged.crt" -noout -fingerprint -sha256)"
forged_san="$(openssl x509 -in "$TMP/forged.crt" -noout -ext subjectAltName | tail -n +2 | sed 's/^ *//')"
origin_san="$(openssl x509 -in "$ORIGIN/origin.crt" -noout -ext subjectAltName | tail -n +2 | sed 's/^ *//')"
alpn="$(sed -n 's/^ALPN protocol: //p' "$TMP/s_client.log" | head -1)"
info "certificate the client saw (forged):"
info "    subject: ${forged_subject#subject=}"
info "    issuer:  ${forged_issuer#issuer=}"
info "    names:   $forged_san"
info "    sha256:  ${forged_fp#*=}"
info "the origin's real certificate:"
info "    subject: ${origin_subject#subject=}"
info "    issuer:  ${origin_issuer#issuer=}"
info "    names:   $origin_san"
info "    sha256:  ${origin_fp#*=}"
[[ "$forged_subject" == "$origin_subject" ]] || fail "the forged subject differs from the origin's"
[[ "$forged_issuer" == "issuer=${ca_subject#subject=}" ]] \
  || fail "the certificate the client saw was not issued by the tlsgate CA (${forged_issuer})"
[[ "$forged_fp" != "$origin_fp" ]] || fail "the client saw the origin's own certificate: not intercepted"
grep -q 'Verify return code: 0 (ok)' "$TMP/s_client.log" || fail "s_client did not verify the forged certificate against the tlsgate CA"
[[ "$alpn" == h2 ]] || fail "ALPN: expected h2 (the origin speaks HTTP/2), got '${alpn:-none}'"
info "same subject and names, but issued by the tlsgate CA: tlsgate terminated the"
info "client's TLS session with a certificate it forged, ALPN $alpn negotiated as with the origin"

# ---------------------------------------------------------------------------
say "A client that trusts only the origin's own certificate is now refused (expected)"
rc=0
ip netns exec "$TG_NS_CLI" curl -sS --max-time 30 --cacert "$ORIGIN/origin.crt" \
  --resolve "$NAME:443:$TG_SRV_V4" -o /dev/null "https://$NAME/file.bin" 2>"$TMP/curl-origin-trust.log" || rc=$?
show <"$TMP/curl-origin-trust.log"
((rc == 60)) || fail "curl --cacert origin.crt exited with $rc, expected 60 (certificate not trusted)"
info "curl exit code 60 (peer certificate cannot be authenticated): the session is intercepted"

# ---------------------------------------------------------------------------
say "The box decides: blocking by content (scripts/inspect-box.sh block ... EVIL-MARKER reset)"
bash scripts/inspect-box.sh block "$BOX" EVIL-MARKER reset | show || fail "scripts/inspect-box.sh block failed"
ip netns exec "$TG_NS_CLI" curl -sS --fail --max-time 10 --http1.1 --cacert "$CA/ca.pem" \
  --resolve "$NAME:443:$TG_SRV_V4" -o /dev/null "https://$NAME/index.html" \
  || fail "a clean request through the blocking box failed"
info "https://$NAME/index.html: passes"
rc=0
start_ns="$(date +%s%N)"
ip netns exec "$TG_NS_CLI" curl -sS --max-time 10 --http1.1 --cacert "$CA/ca.pem" \
  --resolve "$NAME:443:$TG_SRV_V4" -o /dev/null "https://$NAME/index.html?q=EVIL-MARKER" \
  2>"$TMP/curl-blocked.log" || rc=$?
took_ms="$(( ($(date +%s%N) - start_ns) / 1000000 ))"
show <"$TMP/curl-blocked.log"
((rc != 0)) || fail "the request with the marker was not blocked"
info "https://$NAME/index.html?q=EVIL-MARKER: curl failed (exit $rc) after $took_ms ms: the box reset it"
grep ' reset ' "$BOX/blockbox.log" | head -1 | cut -c1-160 | show

# ---------------------------------------------------------------------------
say "Suricata as the box: an inline IPS between the box's ports (scripts/lab-suricata.sh, Debian 13 chroot)"
bash scripts/inspect-box.sh stop "$BOX" >/dev/null || fail "scripts/inspect-box.sh stop failed"
cat >"$TMP/ips.rules" <<'RULES'
drop http any any -> any any (msg:"tlsgate demo: marker in the URI"; flow:established,to_server; http.uri; content:"SURICATA-MARKER"; sid:1000001; rev:1;)
RULES
SURICATA_STARTED=1
bash scripts/lab-suricata.sh start-ips "$SURICATA" "$TMP/ips.rules" | show \
  || fail "scripts/lab-suricata.sh start-ips failed"
ip netns exec "$TG_NS_CLI" curl -sS --fail --max-time 10 --http1.1 --cacert "$CA/ca.pem" \
  --resolve "$NAME:443:$TG_SRV_V4" -o /dev/null "https://$NAME/index.html" \
  || fail "a clean request through Suricata failed"
info "https://$NAME/index.html: passes"
rc=0
ip netns exec "$TG_NS_CLI" curl -sS --max-time 4 --http1.1 --cacert "$CA/ca.pem" \
  --resolve "$NAME:443:$TG_SRV_V4" -o /dev/null "https://$NAME/index.html?q=SURICATA-MARKER" \
  2>"$TMP/curl-suricata.log" || rc=$?
show <"$TMP/curl-suricata.log"
((rc != 0)) || fail "the request with the marker passed Suricata"
drop=""
for ((i = 0; i < 100; i++)); do
  drop="$(grep -h '"event_type":"drop"' "$SURICATA/log/eve.json" 2>/dev/null | head -1)"
  [[ -n "$drop" ]] && break
  sleep 0.1
done
[[ -n "$drop" ]] || fail "Suricata logged no drop in $SURICATA/log/eve.json"
info "https://$NAME/index.html?q=SURICATA-MARKER: no answer (curl exit $rc); Suricata's eve.json:"
python3 -c '
import json, sys
e = json.loads(sys.argv[1])
print(e["event_type"], e["src_ip"], e["src_port"], "->", e["dest_ip"], e["dest_port"], "community_id", e.get("community_id"))
' "$drop" | show
info "the dropped connection stays open until tlsgate stops (Suricata drops its FIN too)"
bash scripts/lab-suricata.sh stop "$SURICATA" >/dev/null || fail "scripts/lab-suricata.sh stop failed"
SURICATA_STARTED=0

# ---------------------------------------------------------------------------
say "Stopping tlsgate (SIGINT) once every connection has closed; its final counters:"
# tlsgate prints its counters every second (--stats-interval 1); closed
# connections linger a few seconds in TIME-WAIT before their flows are freed.
info "waiting for the intercepted connections to leave TIME-WAIT (about 10 s)..."
mark="$(wc -l <"$TMP/tlsgate.log")"
for ((i = 0; i < 300; i++)); do
  tail -n "+$((mark + 1))" "$TMP/tlsgate.log" | grep -q '^tcp: 0 flows live' && break
  sleep 0.1
done
if tail -n "+$((mark + 1))" "$TMP/tlsgate.log" | grep -q '^tcp: 0 flows live'; then
  info "all flows freed after $((i / 10)).$((i % 10)) s"
else
  info "note: some flows are still live after 30 s; stopping anyway"
fi
# SIGINT to the running tlsgate; shows its final counters (from its log) and
# fails unless it exits 0 within 10 s.
stop_appliance() {  # log
  local tg_rc=0
  kill -INT "$TG_PID"
  for ((i = 0; i < 100; i++)); do kill -0 "$TG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$TG_PID" 2>/dev/null && fail "tlsgate did not exit within 10 s of SIGINT"
  wait "$TG_PID" || tg_rc=$?
  TG_PID=""
  sed -n '/tlsgate: stopped/,$p' "$1" | show
  ((tg_rc == 0)) || fail "tlsgate exited with status $tg_rc"
}
stop_appliance "$TMP/tlsgate.log"
[[ -s "$REPORT" ]] || fail "tlsgate wrote no JSON report at $REPORT"
counters="$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
t = r["tcp"]
print(t["tls_intercepted"], t["tls_failed"], t["forged_cache_hits"], t["forged_cache_misses"],
      sum(p["bridged"] for p in r["ports"]), t["inspected"], t["inspect_blocked"])
' "$REPORT")" || fail "cannot read the counters from $REPORT"
read -r intercepted failed hits misses bridged inspected blocked <<<"$counters"
info "from $REPORT: tcp.tls_intercepted=$intercepted tcp.forged_cache_hits=$hits tcp.forged_cache_misses=$misses"
((intercepted >= 3)) || fail "tcp.tls_intercepted is $intercepted, expected at least 3"
info "tcp.inspected=$inspected (connections whose plaintext went through the box) tcp.inspect_blocked=$blocked"
((inspected >= 3 && blocked == 1)) || fail "expected at least 3 inspected connections and 1 blocked by the box"
info "the connection log's verdicts ($TMP/connections.jsonl):"
python3 - "$TMP/connections.jsonl" <<'PY' | show
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    alpn = r["alpn"] or "-"
    client, server = f"{r['src_ip']}:{r['src_port']}", f"{r['dest_ip']}:{r['dest_port']}"
    print(f"{client:>22} -> {server:<18} {alpn:<9} {r['inspection']}; {r['ended']}")
PY

# ---------------------------------------------------------------------------
say "The decrypted capture ($CAPTURE): tshark reads the plaintext as HTTP on port 80"
tshark -n -r "$CAPTURE" -Y http -T fields -e ip.src -e tcp.srcport -e tcp.dstport \
  -e http.request.method -e http.request.uri -e http.response.code 2>/dev/null | show \
  || fail "tshark cannot read $CAPTURE"
tshark -n -r "$CAPTURE" -Y 'http.request.uri == "/file.bin"' 2>/dev/null | grep -q . \
  || fail "the decrypted capture holds no HTTP request for /file.bin"
cp "$CAPTURE" "$KEPT_CAPTURE"
info "copied to $KEPT_CAPTURE: open it in Wireshark (HTTP/1.1 dissects as is; for the HTTP/2"
info "session use Decode As... TCP port 80 -> HTTP2)"

# ---------------------------------------------------------------------------
# The termination mode: tlsgate is the server's TLS end (its own certificate
# chain and key), forwarding the plaintext to a backend with a PROXY v2
# header naming the client.
demo_termination() {
  local config="$TMP/terminate.toml" report="$TMP/terminate-report.json" log="$TMP/terminate.log"
  local host=www.lab.test line ver port verify got want_sha addr client
  say "Termination mode (stud on the wire): a [[service]] for $host, plaintext to nginx with PROXY v2"
  bash tests/lab/origin.sh stop "$ORIGIN"
  ORIGIN_STARTED=0
  PEERS_STARTED=1
  bash tests/lab/terminate-peers.sh start "$PEERS" || fail "tests/lab/terminate-peers.sh could not start the backends"
  info "the HTTPS origin is stopped; in $TG_NS_SRV nginx now serves plaintext HTTP/1.1 on port 8080"
  info "behind 'listen ... proxy_protocol', logging \$proxy_protocol_addr (nothing listens on 443)"
  info "the service's own chain ($PEERS/pki/www.pem), from a lab PKI, not the tlsgate CA:"
  openssl crl2pkcs7 -nocrl -certfile "$PEERS/pki/www.pem" | openssl pkcs7 -print_certs -noout | grep . | show
  {
    tg_lab_config configs/lab.toml
    cat <<EOF

# --- added by scripts/demo.sh (termination) ---
[[service]]
name = "www"
destinations = ["$TG_SRV_V4", "$TG_SRV_V6"]
port = 443
server_names = ["$host"]
certificates = [ { chain = "$PEERS/pki/www.pem", key = "$PEERS/pki/www.key" } ]
backend = { port = 8080 }   # the same server, another port; the client's address is kept
header = "proxy-v2"

[log]
connections = "$TMP/terminate-connections.jsonl"
EOF
  } >"$config"
  sed -n '/^# --- added by scripts\/demo.sh (termination) ---$/,$p' "$config" | tail -n +2 | show
  "$BIN" check --config "$config" >"$TMP/terminate-check.log" 2>&1 \
    || { show <"$TMP/terminate-check.log"; fail "tlsgate check rejected $config"; }
  start_appliance "$config" "$report" "$log"

  want_sha="$(sha256sum "$PEERS/www/file.bin" | cut -d' ' -f1)"
  for addr in "$TG_SRV_V4" "[$TG_SRV_V6]"; do
    client="$TG_CLI_V4"
    [[ "$addr" == "$TG_SRV_V4" ]] || client="$TG_CLI_V6"
    line="$(ip netns exec "$TG_NS_CLI" curl -sS --fail --max-time 30 --http1.1 --cacert "$PEERS/pki/root.pem" \
      --resolve "$host:443:$addr" -o "$TMP/terminated.bin" -w '%{http_version} %{local_port} %{ssl_verify_result}' \
      "https://$host/file.bin")" || fail "curl to $host at $addr (--cacert lab root) failed"
    read -r ver port verify <<<"$line"
    got="$(sha256sum "$TMP/terminated.bin" | cut -d' ' -f1)"
    [[ "$got" == "$want_sha" ]] || fail "the body from $addr is corrupt: sha256 $got != $want_sha"
    info "$addr: HTTP/$ver from client port $port, chain verified against the lab root (result $verify),"
    info "    sha256 $got = the backend's file"
    for ((i = 0; i < 50; i++)); do
      grep -q "^$client $port " "$PEERS/pp-v2.log" && break
      sleep 0.1
    done
    grep -q "^$client $port " "$PEERS/pp-v2.log" || fail "nginx did not log $client $port from the PROXY header"
  done
  info "nginx's log (\$proxy_protocol_addr \$proxy_protocol_port \$remote_addr \$remote_port protocol status bytes uri):"
  show <"$PEERS/pp-v2.log"
  info "the PROXY v2 header named the client's own address and port; the TCP leg came from it too"
  stop_appliance "$log"
  info "the connection log's records ($TMP/terminate-connections.jsonl):"
  python3 - "$TMP/terminate-connections.jsonl" <<'PY' | show
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    client, server = f"{r['src_ip']}:{r['src_port']}", f"{r['dest_ip']}:{r['dest_port']}"
    print(f"{client:>22} -> {server:<18} {r['decision']} ({r['reason']}) sni {r['sni']} "
          f"{r['client_tls_version']} {r['alpn'] or '-'}; {r['ended']}")
PY
}
demo_termination

say "Summary"
cat <<EOF
    * A client ($TG_NS_CLI, $TG_CLI_V4 / $TG_CLI_V6) and an origin ($TG_NS_SRV,
      $TG_SRV_V4 / $TG_SRV_V6) share one subnet; tlsgate sits between them in $TG_NS_GW,
      a namespace with no addresses whose kernel forwards nothing.
    * Ping, ARP and neighbour discovery were bridged untouched ($bridged frames bridged).
    * $intercepted TLS sessions to port 443 were intercepted: tlsgate presented
      certificates for $NAME forged by its own CA ($misses forged, $hits served from
      its cache) and opened its own TLS session to the origin, whose certificate it
      verified. $failed handshake(s) failed: the client that rejected the forged
      certificate.
    * Clients trusting the tlsgate CA downloaded 1 MiB intact over HTTP/2 (IPv4)
      and HTTP/1.1 (IPv6); a client trusting only the origin's own certificate was
      refused (curl exit 60).
    * $inspected connections went through the inspection box as plaintext TCP: tcpflow
      recorded the exact request and response; as a blocking box it reset the
      request carrying a marker ($blocked blocked). Then Suricata, as an inline IPS
      between the box's ports, dropped the request carrying its rule's marker.
    * The plaintext is in $KEPT_CAPTURE, a pcap that Wireshark and tshark
      dissect as HTTP.
    * As a TLS terminator ([[service]]), tlsgate presented the service's own chain,
      and a plaintext nginx behind it got each client's address in a PROXY v2
      header; the 3 MiB body arrived intact over IPv4 and IPv6.
EOF
OK=1
echo
echo "demo.sh: all steps passed"
