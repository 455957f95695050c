#!/usr/bin/env bash
# tests/lab/terminate-peers.sh — the real peers of the termination mode
# (`[[service]]`, stud on the wire) in the server namespace: a lab PKI, nginx
# backends reading the PROXY protocol and HAProxy as a second backend.
#
#   terminate-peers.sh start DIR    (root; namespace and addresses from scripts/lab-env.sh)
#   terminate-peers.sh stop DIR
#
# DIR/pki: a "real" chain for each service name, not the appliance CA: a root
#   CA (root.pem: what clients trust), an intermediate, and for each NAME in
#   $TG_PEERS_NAMES (default: www v1 h2 ha down) a leaf for NAME.lab.test
#   (ECDSA P-256, serverAuth) in NAME.pem (leaf then intermediate: the chain a
#   server sends) with its key in NAME.key.
# DIR/www: index.html and file.bin (3 MiB of random bytes).
# nginx (DIR/nginx.conf), plaintext, every listener `proxy_protocol` (it takes
#   v1 and v2), on $TG_SRV_V4 and [$TG_SRV_V6]; each logs
#   "$proxy_protocol_addr $proxy_protocol_port $remote_addr $remote_port
#   $server_protocol $status $body_bytes_sent $request_uri" to its own file:
#     8080  HTTP/1.1        DIR/pp-v2.log   (the PROXY v2 service)
#     8081  HTTP/1.1        DIR/pp-v1.log   (the PROXY v1 service)
#     8082  HTTP/2 (prior knowledge, `listen ... http2` without ssl)  DIR/pp-h2.log
#   With TG_PEERS_TLS=1 also 443 `ssl http2` with DIR/pki/www.pem (nginx
#   terminating TLS itself, for the benchmark), logging to DIR/tls.log.
# HAProxy (DIR/haproxy.cfg, foreground, its log in DIR/haproxy.log) on
#   $TG_PEERS_HA_V4:8090 and [$TG_PEERS_HA_V6]:8090 (added to the server's
#   interface: a second host behind the appliance), `accept-proxy` (v1/v2),
#   answers every request with "src=<address> port=<port> authority=<PROXY v2
#   AUTHORITY TLV>" of what the PROXY header told it, and logs the same plus
#   the connection's own source.
# Behind the appliance's own address (its `ports.server.addresses`
#   198.18.7.1/24 and 2001:2:0:7::1/64 in lab_terminate's owned-address
#   test): the server also holds 198.18.7.2/24 and 2001:2:0:7::2/64 on its
#   interface (the owned prefixes: reached on the link, and the gateway of
#   the next two) and 198.18.8.2, 2001:2:0:8::2 on lo (another subnet:
#   reached through that gateway); nginx reads PROXY on 8080 at all four and
#   logs (same format) to DIR/pp-owned.log.
# Nothing listens on port 443 unless TG_PEERS_TLS=1: a connection to a
# service's port is answered by the appliance or not at all.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../scripts/lab-env.sh"

: "${TG_PEERS_NAMES:=www v1 h2 ha down}"
: "${TG_PEERS_HA_V4:=198.18.0.4}"
: "${TG_PEERS_HA_V6:=2001:2::4}"

action="${1:?usage: terminate-peers.sh start|stop DIR}"
dir="${2:?usage: terminate-peers.sh start|stop DIR}"

stop_pidfile() {
  local file="$1" pid
  [[ -s "$file" ]] || return 0
  pid="$(cat "$file")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

case "$action" in
stop)
  stop_pidfile "$dir/nginx.pid"
  stop_pidfile "$dir/haproxy.pid"
  exit 0
  ;;
start) ;;
*) echo "terminate-peers.sh: unknown action $action" >&2; exit 2 ;;
esac

die() { echo "terminate-peers.sh: $*" >&2; exit 1; }

# --- PKI: root -> intermediate -> one leaf per service name --------------------
pki="$dir/pki"
mkdir -p "$pki" "$dir/www" "$dir/temp"
chmod 0755 "$dir"
quiet() { "$@" >/dev/null 2>&1 || die "failed: $*"; }
new_key() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
new_key "$pki/root.key"
quiet openssl req -x509 -new -key "$pki/root.key" -days 30 -subj "/CN=tlsgate lab root CA/O=Lab PKI" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$pki/root.pem"
new_key "$pki/intermediate.key"
quiet openssl req -new -key "$pki/intermediate.key" -subj "/CN=tlsgate lab intermediate CA/O=Lab PKI" \
  -out "$pki/intermediate.csr"
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$pki/ca.ext"
quiet openssl x509 -req -in "$pki/intermediate.csr" -CA "$pki/root.pem" -CAkey "$pki/root.key" \
  -set_serial "0x$(openssl rand -hex 8)" -days 30 -extfile "$pki/ca.ext" -out "$pki/intermediate.pem"
for name in $TG_PEERS_NAMES; do
  new_key "$pki/$name.key"
  quiet openssl req -new -key "$pki/$name.key" -subj "/CN=$name.lab.test/O=Lab Service" -out "$pki/$name.csr"
  printf 'subjectAltName=DNS:%s.lab.test\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$name" >"$pki/$name.ext"
  quiet openssl x509 -req -in "$pki/$name.csr" -CA "$pki/intermediate.pem" -CAkey "$pki/intermediate.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.leaf.pem"
  cat "$pki/$name.leaf.pem" "$pki/intermediate.pem" >"$pki/$name.pem"
  quiet openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/intermediate.pem" "$pki/$name.leaf.pem"
done
chmod 0644 "$pki"/*.pem

# --- content ----------------------------------------------------------------------
echo "hello from the lab backend" >"$dir/www/index.html"
head -c $((3 * 1048576)) /dev/urandom >"$dir/www/file.bin"

# --- nginx backends ---------------------------------------------------------------
listen_pp() {  # port [extra listen parameters]
  printf '        listen %s:%s proxy_protocol %s;\n        listen [%s]:%s proxy_protocol %s;\n' \
    "$TG_SRV_V4" "$1" "${2:-}" "$TG_SRV_V6" "$1" "${2:-}"
}
backend_server() {  # port log [extra listen parameters]
  cat <<EOF
    server {
$(listen_pp "$1" "${3:-}")
        access_log $dir/$2 backend;
        root $dir/www;
    }
EOF
}
owned_server="    server {
        listen 198.18.7.2:8080 proxy_protocol;
        listen [2001:2:0:7::2]:8080 proxy_protocol;
        listen 198.18.8.2:8080 proxy_protocol;
        listen [2001:2:0:8::2]:8080 proxy_protocol;
        access_log $dir/pp-owned.log backend;
        root $dir/www;
    }"
tls_server=""
if [[ "${TG_PEERS_TLS:-0}" == 1 ]]; then
  tls_server="    server {
        listen $TG_SRV_V4:443 ssl http2;
        listen [$TG_SRV_V6]:443 ssl http2;
        ssl_certificate $pki/www.pem;
        ssl_certificate_key $pki/www.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        access_log $dir/tls.log backend;
        root $dir/www;
    }"
fi
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    client_body_temp_path $dir/temp/body;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    log_format backend '\$proxy_protocol_addr \$proxy_protocol_port \$remote_addr \$remote_port '
                       '\$server_protocol \$status \$body_bytes_sent \$request_uri';
$(backend_server 8080 pp-v2.log)
$(backend_server 8081 pp-v1.log)
$(backend_server 8082 pp-h2.log http2)
$owned_server
$tls_server
}
CONF
: >"$dir/pp-v2.log"
: >"$dir/pp-v1.log"
: >"$dir/pp-h2.log"
: >"$dir/pp-owned.log"
ip -n "$TG_NS_SRV" addr replace 198.18.7.2/24 dev "$TG_SRV_IF"
ip -n "$TG_NS_SRV" addr replace 2001:2:0:7::2/64 dev "$TG_SRV_IF" nodad
ip -n "$TG_NS_SRV" addr replace 198.18.8.2/32 dev lo
ip -n "$TG_NS_SRV" addr replace 2001:2:0:8::2/128 dev lo
ip netns exec "$TG_NS_SRV" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" ||
  die "nginx did not start: $(cat "$dir/error.log" 2>/dev/null)"

# --- HAProxy: a second host behind the appliance ----------------------------------
ip -n "$TG_NS_SRV" addr replace "$TG_PEERS_HA_V4/$TG_V4_PREFIX" dev "$TG_SRV_IF"
ip -n "$TG_NS_SRV" addr replace "$TG_PEERS_HA_V6/$TG_V6_PREFIX" dev "$TG_SRV_IF" nodad
cat >"$dir/haproxy.cfg" <<CONF
global
    log stdout format raw local0
    maxconn 4096
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend proxied
    bind $TG_PEERS_HA_V4:8090 accept-proxy
    bind [$TG_PEERS_HA_V6]:8090 accept-proxy
    log-format "src=%ci port=%cp authority=%[fc_pp_authority] connection_from=%[fc_src] %HM %HU %ST"
    http-request return status 200 content-type text/plain lf-string "src=%[src] port=%[src_port] authority=%[fc_pp_authority]\n"
CONF
ip netns exec "$TG_NS_SRV" haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy refuses $dir/haproxy.cfg"
setsid ip netns exec "$TG_NS_SRV" haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 </dev/null &
echo $! >"$dir/haproxy.pid"

# --- ready ------------------------------------------------------------------------
listening() { ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :$1" | grep -q .; }
for _ in $(seq 100); do
  listening 8080 && listening 8081 && listening 8082 && listening 8090 && exit 0
  sleep 0.05
done
die "backends not listening: nginx $(cat "$dir/error.log" 2>/dev/null); haproxy $(cat "$dir/haproxy.log" 2>/dev/null)"
