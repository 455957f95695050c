#!/usr/bin/env bash
# tests/lab/starttls-peers.sh — the real STARTTLS servers of the lab, each its
# own instance with its own configuration and data under DIR, inside the
# server namespace, bound to $TG_SRV_V4 and $TG_SRV_V6 only.
#
#   starttls-peers.sh start DIR    (root; namespace and addresses from scripts/lab-env.sh)
#   starttls-peers.sh stop DIR     (stops exactly what start started)
#
# DIR/pki: a lab CA (ca.pem: what clients trust) and one server certificate
#   (server.pem, server.key; ECDSA P-256) for lab.test, mail.lab.test and the
#   server's two addresses, used by every server below.
# Postfix (DIR/postfix: main.cf, master.cf; queue DIR/postfix-queue), ports 25
#   (STARTTLS offered) and 587 (STARTTLS required), delivering mail for
#   @lab.test to the Maildir DIR/mail/lab.test/<user>/ (virtual, owned by
#   nobody), logging (client addresses, TLS) to DIR/maillog.
# Dovecot (DIR/dovecot/dovecot.conf), IMAP 143 and POP3 110, STARTTLS, no
#   plaintext login before it, users in DIR/dovecot/passwd: tester / secret,
#   whose Maildir is the one Postfix delivers to and holds one message at
#   start (DIR/first-message.eml); log DIR/dovecot/dovecot.log.
# Prosody (DIR/prosody/prosody.cfg.lua), XMPP client-to-server 5222 for the
#   domain lab.test, encryption required, account tester@lab.test / secret;
#   log DIR/prosody/prosody.log.
# vsftpd (DIR/vsftpd-v4.conf and DIR/vsftpd-v6.conf: one listener per
#   family), port 21, anonymous login over AUTH TLS only (control and data),
#   passive ports 40000-40009, active mode from port 20, DIR/ftp/file.bin (256 KiB random) to download
#   and the writable DIR/ftp/upload/; `require_ssl_reuse` on (vsftpd's
#   default: the data connection resumes the control connection's TLS
#   session); log DIR/vsftpd.log.
# PostgreSQL 15 (data directory DIR/pg/data made by initdb as postgres),
#   port 5432, ssl = on, TLS only from the network (hostssl,
#   scram-sha-256): role tester / secret owning database labdb, with a table
#   greeting(word) holding 'hello'; log DIR/pg/postgresql.log
#   (log_connections).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../scripts/lab-env.sh"

action="${1:?usage: starttls-peers.sh start|stop DIR}"
dir="${2:?usage: starttls-peers.sh start|stop DIR}"
pg_bin=/usr/lib/postgresql/15/bin
in_srv() { ip netns exec "$TG_NS_SRV" "$@"; }

# Whether `pid` runs (a zombie awaiting its reaper does not).
running() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

# Kills the process group led by the pid in `file` (setsid made it), waiting
# for the leader to go.
stop_group() {
  local file="$1" pid
  [[ -s "$file" ]] || return 0
  pid="$(cat "$file")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 100); do running "$pid" || break; sleep 0.05; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$file"
}

stop_all() {
  if [[ -s "$dir/postfix-queue/pid/master.pid" ]]; then
    in_srv postfix -c "$dir/postfix" stop >/dev/null 2>&1 || true
  fi
  if [[ -s "$dir/dovecot/run/master.pid" ]]; then
    dovecot -c "$dir/dovecot/dovecot.conf" stop >/dev/null 2>&1 || true
  fi
  if [[ -s "$dir/pg/data/postmaster.pid" ]]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  stop_group "$dir/prosody.pid"
  stop_group "$dir/vsftpd-v4.pid"
  stop_group "$dir/vsftpd-v6.pid"
}

case "$action" in
stop) stop_all; exit 0 ;;
start) ;;
*) echo "starttls-peers.sh: unknown action $action" >&2; exit 2 ;;
esac

die() { echo "starttls-peers.sh: $*" >&2; exit 1; }
quiet() { "$@" >/dev/null 2>&1 || die "failed: $*"; }
mkdir -p "$dir"
chmod 0755 "$dir"

# --- PKI: a lab CA and one server certificate --------------------------------------
pki="$dir/pki"
mkdir -p "$pki"
new_key() { quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
new_key "$pki/ca.key"
quiet openssl req -x509 -new -key "$pki/ca.key" -days 30 -subj "/CN=tlsgate lab STARTTLS CA/O=Lab PKI" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$pki/ca.pem"
new_key "$pki/server.key"
quiet openssl req -new -key "$pki/server.key" -subj "/CN=mail.lab.test/O=Lab Mail" -out "$pki/server.csr"
printf 'subjectAltName=DNS:lab.test,DNS:mail.lab.test,IP:%s,IP:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$TG_SRV_V4" "$TG_SRV_V6" >"$pki/server.ext"
quiet openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
  -set_serial "0x$(openssl rand -hex 8)" -days 30 -extfile "$pki/server.ext" -out "$pki/server.pem"
quiet openssl verify -CAfile "$pki/ca.pem" "$pki/server.pem"
chmod 0755 "$pki"
chmod 0644 "$pki"/*.pem
chmod 0600 "$pki"/*.key
# Each server reads the key as its own user: PostgreSQL and Prosody get copies.
install -o postgres -g postgres -m 0600 "$pki/server.key" "$pki/server-postgres.key"
install -o prosody -g prosody -m 0600 "$pki/server.key" "$pki/server-prosody.key"

# --- the mailbox: tester@lab.test, one message ---------------------------------------
maildir="$dir/mail/lab.test/tester"
mkdir -p "$maildir/cur" "$maildir/new" "$maildir/tmp"
cat >"$dir/first-message.eml" <<'MAIL'
From: Lab Sender <sender@lab.test>
To: Tester <tester@lab.test>
Subject: waiting in the mailbox
Date: Thu, 03 Dec 2026 12:00:00 +0000
Message-ID: <first-message@lab.test>

The first message, placed in the Maildir by starttls-peers.sh.
MAIL
sed 's/$/\r/' "$dir/first-message.eml" >"$maildir/cur/1764763200.M1P1.lab:2,"
chown -R nobody:nogroup "$dir/mail"

# --- Postfix: 25 and 587 ---------------------------------------------------------------
pf="$dir/postfix"
mkdir -p "$pf"
cat >"$pf/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $dir/postfix-queue
data_directory = $dir/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.lab.test
mydomain = lab.test
myorigin = lab.test
inet_interfaces = $TG_SRV_V4, [$TG_SRV_V6]
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_banner = \$myhostname ESMTP lab Postfix
biff = no
virtual_mailbox_domains = lab.test
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = texthash:$pf/vmailbox
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_cert_file = $pki/server.pem
smtpd_tls_key_file = $pki/server.key
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
CONF
# "user@domain  domain/user/": the trailing slash makes it a Maildir.
echo "tester@lab.test lab.test/tester/" >"$pf/vmailbox"
cat >"$pf/master.cf" <<'CONF'
# service type  private unpriv  chroot  wakeup  maxproc command + args
smtp       inet  n       -       n       -       -       smtpd
submission inet  n       -       n       -       -       smtpd
  -o smtpd_tls_security_level=encrypt
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
CONF
mkdir -p "$dir/postfix-queue" "$dir/postfix-data"
chown postfix "$dir/postfix-data"
: >"$dir/maillog"
in_srv postfix -c "$pf" check >"$dir/postfix-start.log" 2>&1 || die "postfix check: $(cat "$dir/postfix-start.log")"
in_srv postfix -c "$pf" start >>"$dir/postfix-start.log" 2>&1 || die "postfix start: $(cat "$dir/postfix-start.log")"

# --- Dovecot: IMAP 143 and POP3 110 ----------------------------------------------------
dc="$dir/dovecot"
mkdir -p "$dc/run" "$dc/state"
echo "tester:{PLAIN}secret:$(id -u nobody):$(id -g nobody)::$maildir" >"$dc/passwd"
chmod 0644 "$dc/passwd"
cat >"$dc/dovecot.conf" <<CONF
instance_name = tlsgate-lab
base_dir = $dc/run
state_dir = $dc/state
protocols = imap pop3
listen = $TG_SRV_V4, $TG_SRV_V6
log_path = $dc/dovecot.log
auth_verbose = yes
ssl = yes
ssl_cert = <$pki/server.pem
ssl_key = <$pki/server.key
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:~
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dc/passwd
}
userdb {
  driver = passwd-file
  args = $dc/passwd
}
pop3_uidl_format = %08Xu%08Xv
# STARTTLS only: no implicit-TLS listeners (993, 995).
service imap-login {
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3s {
    port = 0
  }
}
CONF
in_srv dovecot -c "$dc/dovecot.conf" >"$dc/console.log" 2>&1 </dev/null || die "dovecot did not start: $(tail -5 "$dc/dovecot.log" 2>/dev/null)"

# --- Prosody: XMPP 5222 ----------------------------------------------------------------
px="$dir/prosody"
mkdir -p "$px/data"
cat >"$px/prosody.cfg.lua" <<CONF
pidfile = "$px/prosody.pid"
data_path = "$px/data"
log = { info = "$px/prosody.log" }
interfaces = { "$TG_SRV_V4", "$TG_SRV_V6" }
c2s_ports = { 5222 }
c2s_direct_tls_ports = { }
s2s_ports = { }
c2s_require_encryption = true
authentication = "internal_hashed"
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "posix" }
modules_disabled = { "s2s" }
certificates = "$px/certs"
ssl = { certificate = "$pki/server.pem", key = "$pki/server-prosody.key" }
VirtualHost "lab.test"
CONF
chown -R prosody:prosody "$px"
runuser -u prosody -- prosodyctl --config "$px/prosody.cfg.lua" register tester lab.test secret \
  >"$px/register.log" 2>&1 || die "prosodyctl register: $(cat "$px/register.log")"
setsid ip netns exec "$TG_NS_SRV" runuser -u prosody -- prosody --config "$px/prosody.cfg.lua" -F \
  >"$px/console.log" 2>&1 </dev/null &
echo $! >"$dir/prosody.pid"

# --- vsftpd: 21, AUTH TLS, passive and active ------------------------------------------------------
ftp="$dir/ftp"
mkdir -p "$ftp/upload" "$dir/ftp-empty"
head -c $((256 * 1024)) /dev/urandom >"$ftp/file.bin"
chmod 0755 "$ftp" "$dir/ftp-empty"
chmod 0644 "$ftp/file.bin"
chown ftp:ftp "$ftp/upload"
: >"$dir/vsftpd.log"
vsftpd_conf() {  # family: v4 | v6
  local listen
  if [[ "$1" == v4 ]]; then
    listen="listen=YES
listen_ipv6=NO
listen_address=$TG_SRV_V4"
  else
    listen="listen=NO
listen_ipv6=YES
listen_address6=$TG_SRV_V6"
  fi
  cat <<CONF
$listen
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
anon_root=$ftp
ftp_username=ftp
write_enable=YES
anon_upload_enable=YES
anon_umask=022
secure_chroot_dir=$dir/ftp-empty
pasv_enable=YES
pasv_min_port=40000
pasv_max_port=40009
port_enable=YES
connect_from_port_20=YES
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
ssl_tlsv1=NO
ssl_sslv2=NO
ssl_sslv3=NO
require_ssl_reuse=YES
ssl_ciphers=HIGH
rsa_cert_file=$pki/server.pem
rsa_private_key_file=$pki/server.key
xferlog_enable=YES
vsftpd_log_file=$dir/vsftpd.log
log_ftp_protocol=YES
seccomp_sandbox=NO
CONF
}
for family in v4 v6; do
  vsftpd_conf "$family" >"$dir/vsftpd-$family.conf"
  setsid ip netns exec "$TG_NS_SRV" vsftpd "$dir/vsftpd-$family.conf" >"$dir/vsftpd-$family.out" 2>&1 </dev/null &
  echo $! >"$dir/vsftpd-$family.pid"
done

# --- PostgreSQL 15: 5432 --------------------------------------------------------------
pg="$dir/pg"
mkdir -p "$pg/run"
chown postgres:postgres "$pg" "$pg/run"
runuser -u postgres -- "$pg_bin/initdb" -D "$pg/data" -U postgres --auth-local=trust \
  --auth-host=scram-sha-256 >"$pg/initdb.log" 2>&1 || die "initdb: $(cat "$pg/initdb.log")"
cat >>"$pg/data/postgresql.conf" <<CONF
listen_addresses = '$TG_SRV_V4,$TG_SRV_V6'
port = 5432
unix_socket_directories = '$pg/run'
ssl = on
ssl_cert_file = '$pki/server.pem'
ssl_key_file = '$pki/server-postgres.key'
log_connections = on
CONF
cat >"$pg/data/pg_hba.conf" <<CONF
local   all all                 trust
hostssl all all 0.0.0.0/0       scram-sha-256
hostssl all all ::/0            scram-sha-256
CONF
in_srv runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg/data" -l "$pg/postgresql.log" -w start \
  >"$pg/pg_ctl.log" 2>&1 || die "postgresql: $(cat "$pg/pg_ctl.log" "$pg/postgresql.log" 2>/dev/null)"
in_srv runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -h "$pg/run" -U postgres -d postgres \
  -c "CREATE ROLE tester LOGIN PASSWORD 'secret'" -c "CREATE DATABASE labdb OWNER tester" \
  >"$pg/setup.log" 2>&1 || die "postgresql setup: $(cat "$pg/setup.log")"
in_srv runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -h "$pg/run" -U tester -d labdb \
  -c "CREATE TABLE greeting (word text)" -c "INSERT INTO greeting VALUES ('hello')" \
  >>"$pg/setup.log" 2>&1 || die "postgresql setup: $(cat "$pg/setup.log")"

# --- ready: every port on both addresses --------------------------------------------------
listening() { in_srv ss -Hltn "src $1 and sport = :$2" | grep -q .; }
all_listening() {
  local address port
  for address in "$TG_SRV_V4" "[$TG_SRV_V6]"; do
    for port in 25 587 143 110 5222 21 5432; do
      listening "$address" "$port" || return 1
    done
  done
}
for _ in $(seq 200); do
  all_listening && exit 0
  sleep 0.05
done
in_srv ss -Hltn >&2
die "not every server listens: maillog $(tail -3 "$dir/maillog"); dovecot $(tail -3 "$dc/dovecot.log" 2>/dev/null); prosody $(tail -3 "$px/console.log" "$px/prosody.log" 2>/dev/null); vsftpd $(cat "$dir"/vsftpd-v*.out)"
