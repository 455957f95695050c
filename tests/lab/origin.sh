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
# TG_ORIGIN_PROTOCOLS (nginx ssl_protocols, default "TLSv1.2 TLSv1.3") and
# TG_ORIGIN_CIPHERS (ssl_ciphers, OpenSSL's syntax) make an older server.
# TG_ORIGIN_PLAIN=1 also serves DIR/www in plain HTTP on port 80 (a server
# behind a downgrade).
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
  # Valid for one day, a week ago (openssl ca sets explicit dates; OpenSSL 3.0
  # has no x509 -not_before/-not_after).
  mkdir -p "$dir/ca"
  : >"$dir/ca/index.txt"
  cat >"$dir/ca.cnf" <<CNF
[ca]
default_ca = lab
[lab]
database = $dir/ca/index.txt
new_certs_dir = $dir/ca
serial = $dir/ca/serial
default_md = sha256
policy = any
copy_extensions = copy
[any]
commonName = supplied
organizationName = optional
CNF
  echo 01 >"$dir/ca/serial"
  openssl req -new -key "$dir/origin.key" -subj "/CN=$name/O=Lab Origin" \
    -addext "subjectAltName=DNS:$name,IP:$TG_SRV_V4,IP:$TG_SRV_V6" -out "$dir/origin.csr" 2>/dev/null
  openssl ca -batch -config "$dir/ca.cnf" -selfsign -keyfile "$dir/origin.key" -in "$dir/origin.csr" \
    -startdate "$(date -u -d '-8 days' +%Y%m%d%H%M%SZ)" -enddate "$(date -u -d '-7 days' +%Y%m%d%H%M%SZ)" \
    -out "$dir/origin.crt" 2>/dev/null
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
        ssl_protocols ${TG_ORIGIN_PROTOCOLS:-TLSv1.2 TLSv1.3};
        ${TG_ORIGIN_CIPHERS:+ssl_ciphers $TG_ORIGIN_CIPHERS;}
        root $dir/www;
    }
    ${TG_ORIGIN_PLAIN:+server { listen $TG_SRV_V4:80; listen [$TG_SRV_V6]:80; root $dir/www; \}}
}
CONF
ip netns exec "$TG_NS_SRV" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
for _ in $(seq 100); do
  ip netns exec "$TG_NS_SRV" ss -Hltn "sport = :443" | grep -q . && exit 0
  sleep 0.05
done
echo "origin.sh: nginx did not listen on 443: $(cat "$dir/error.log" 2>/dev/null)" >&2
exit 1
