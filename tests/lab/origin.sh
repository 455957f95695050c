#!/usr/bin/env bash
# tests/lab/origin.sh — an HTTPS origin for the lab: nginx in the server
# namespace with a certificate for origin.test (and its IP addresses), TLS
# 1.2/1.3, HTTP/1.1 and HTTP/2, serving DIR/www (index.html and a 1 MiB
# file.bin).
#
#   origin.sh start DIR [NAME] [VALIDITY]   NAME defaults to origin.test;
#                                           VALIDITY "valid" (default) or "expired"
#   origin.sh stop DIR
#
# The origin's certificate is DIR/origin.crt: give it to the appliance as
# its upstream trust bundle. Namespace and addresses from scripts/lab-env.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../scripts/lab-env.sh"

action="${1:?usage: origin.sh start|stop DIR}"
dir="${2:?usage: origin.sh start|stop DIR}"

case "$action" in
stop)
  [[ -f "$dir/nginx.pid" ]] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
  exit 0
  ;;
start) ;;
*) echo "origin.sh: unknown action $action" >&2; exit 2 ;;
esac

name="${3:-origin.test}"
validity="${4:-valid}"
mkdir -p "$dir/www" "$dir/temp"
chmod 0755 "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/origin.key" 2>/dev/null
if [[ "$validity" == expired ]]; then
  # Valid yesterday only: a CA-less self-signed cert whose notAfter passed.
  openssl req -new -key "$dir/origin.key" -subj "/CN=$name/O=Lab Origin" -out "$dir/origin.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,IP:%s,IP:%s\n' "$name" "$TG_SRV_V4" "$TG_SRV_V6" >"$dir/san.ext"
  openssl x509 -req -in "$dir/origin.csr" -signkey "$dir/origin.key" -days 1 \
    -not_before "$(date -u -d '-3 days' +%Y%m%d%H%M%SZ)" -not_after "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" \
    -extfile "$dir/san.ext" -out "$dir/origin.crt" 2>/dev/null
else
  openssl req -x509 -new -key "$dir/origin.key" -days 30 -subj "/CN=$name/O=Lab Origin" \
    -addext "subjectAltName=DNS:$name,IP:$TG_SRV_V4,IP:$TG_SRV_V6" \
    -addext "basicConstraints=critical,CA:FALSE" -out "$dir/origin.crt" 2>/dev/null
fi
echo "hello from $name" >"$dir/www/index.html"
head -c 1048576 /dev/urandom >"$dir/www/file.bin"
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/temp/body;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    default_type application/octet-stream;
    server {
        listen $TG_SRV_V4:443 ssl http2;
        listen [$TG_SRV_V6]:443 ssl http2;
        server_name $name;
        ssl_certificate $dir/origin.crt;
        ssl_certificate_key $dir/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $dir/www;
    }
}
CONF
ip netns exec "$TG_NS_SRV" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
for _ in $(seq 100); do
  ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :443" | grep -q . && exit 0
  sleep 0.05
done
echo "origin.sh: nginx did not listen on 443: $(cat "$dir/error.log" 2>/dev/null)" >&2
exit 1
