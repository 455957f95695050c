#!/usr/bin/env bash
# scripts/test-package.sh — the Debian package, installed on this machine as
# an operator would (scripts/test.sh runs it; needs root):
#
#   cargo deb -p tlsgate   ->  dpkg -i  ->  checks  ->  dpkg -i again (upgrade)
#                          ->  the installed tlsgate in the lab (READY=1, HTTPS
#                              intercepted with the CA postinst made)
#                          ->  dpkg --purge  ->  checks that it all went
#
# Fails, naming what is wrong, if the package is broken. The lab part holds
# the lab lock (flock /tmp/tlsgate-lab.lock) like the lab tests. It installs
# cargo-deb (a pinned version) the first time. The package is built from the
# debug build scripts/test.sh has just made (`--profile dev`: no second,
# release build of the workspace in CI; cargo-deb warns that it prefers
# release builds). What is tested is the packaging: files, maintainer scripts,
# the unit, dependencies. Releases are built with `cargo deb -p tlsgate`.
#
# A tlsgate package already installed is refused (this test purges what it
# installs, and would take the operator's configuration with it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DEB_VERSION=3.8.0
step() { echo "test-package.sh: $*"; }
fail() { echo "test-package.sh: FAIL: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "must run as root (dpkg -i)"
if dpkg-query -W -f='${Status}' tlsgate 2>/dev/null | grep -q installed; then
  fail "a tlsgate package is already installed here; remove it first (dpkg --purge tlsgate)"
fi

if [[ "$(cargo deb --version 2>/dev/null || true)" != *"$CARGO_DEB_VERSION"* ]]; then
  step "cargo install cargo-deb $CARGO_DEB_VERSION (once per machine)"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
fi

deb=target/debian/tlsgate-test.deb
step "cargo deb -p tlsgate --profile dev"
rm -f "$deb"
cargo deb -p tlsgate --profile dev --fast --locked --output "$deb"

scratch="$(mktemp -d /tmp/tlsgate-package.XXXXXX)"
chmod 0755 "$scratch"   # the lab origin's nginx workers (nobody) serve from it
tlsgate_pid= notify_pid= lab_up=
cleanup() {
  if [[ -n "$notify_pid" ]]; then kill "$notify_pid" 2>/dev/null || true; fi
  if [[ -n "$tlsgate_pid" ]]; then kill -TERM "$tlsgate_pid" 2>/dev/null || true; wait "$tlsgate_pid" || true; fi
  if [[ -n "$lab_up" ]]; then
    bash tests/lab/origin.sh stop "$scratch/origin" || true
    bash scripts/lab-down.sh >/dev/null 2>&1 || true
  fi
  dpkg --purge tlsgate >/dev/null 2>&1 || true
  rm -rf "$scratch" /run/tlsgate
}
trap cleanup EXIT

step "dpkg -i"
dpkg -i "$deb" >"$scratch/install.log" 2>&1 || { cat "$scratch/install.log" >&2; fail "dpkg -i"; }
cat "$scratch/install.log"

# --- what is installed ---------------------------------------------------------
[[ "$(command -v tlsgate)" == /usr/bin/tlsgate ]] || fail "tlsgate is not /usr/bin/tlsgate on PATH"
version="$(tlsgate --version)"
[[ "$version" == "tlsgate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]] \
  || fail "tlsgate --version says '$version'"
step "$version from PATH"

# /run/tlsgate as the unit makes it (RuntimeDirectory=, then ExecStartPre=+chown):
# check verifies that the tlsgate user can create the control socket there.
install -d -o tlsgate -g tlsgate -m 0750 /run/tlsgate
tlsgate check --config /etc/tlsgate/tlsgate.toml >"$scratch/check.log" \
  || { cat "$scratch/check.log" >&2; fail "tlsgate check rejects the shipped /etc/tlsgate/tlsgate.toml"; }
grep -q "the CA with its key (matching)" "$scratch/check.log" \
  || fail "check did not load the generated CA: $(cat "$scratch/check.log")"
step "tlsgate check accepts the shipped /etc/tlsgate/tlsgate.toml"

dpkg-query --showformat='${Conffiles}\n' --show tlsgate | grep -q ' /etc/tlsgate/tlsgate.toml ' \
  || fail "/etc/tlsgate/tlsgate.toml is not a conffile"

for page in tlsgate tlsgate-run tlsgate-check tlsgate-ca-init; do
  [[ -s "/usr/share/man/man1/$page.1" ]] || fail "no man page /usr/share/man/man1/$page.1"
  man -w "$page" >/dev/null 2>&1 || fail "man does not find $page (man -w $page)"
done
grep -qx '.SH "EXIT STATUS"' /usr/share/man/man1/tlsgate.1 || fail "man tlsgate has no EXIT STATUS section"
for file in /usr/share/bash-completion/completions/tlsgate /usr/share/zsh/vendor-completions/_tlsgate \
            /usr/share/fish/vendor_completions.d/tlsgate.fish; do
  [[ -s "$file" ]] || fail "no completion $file"
done
bash -c 'source /usr/share/bash-completion/completions/tlsgate && complete -p tlsgate' >/dev/null \
  || fail "the bash completion does not register for tlsgate"
step "man pages and completions installed"

IFS=: read -r _ _ _ _ _ home shell < <(getent passwd tlsgate) || fail "no tlsgate user"
[[ "$home" == /var/lib/tlsgate && "$shell" == */nologin ]] || fail "tlsgate user: home $home, shell $shell"
for dir in /var/log/tlsgate /var/lib/tlsgate; do
  [[ "$(stat -c '%U:%G %a' "$dir")" == "tlsgate:tlsgate 750" ]] || fail "$dir is $(stat -c '%U:%G %a' "$dir")"
done
[[ "$(stat -c '%U %a' /etc/tlsgate/ca/ca.key)" == "root 600" ]] || fail "ca.key is $(stat -c '%U %a' /etc/tlsgate/ca/ca.key)"
step "system user tlsgate, its directories, the CA"

unit=/lib/systemd/system/tlsgate.service
[[ -f "$unit" ]] || fail "no $unit"
grep -qx 'Type=notify' "$unit" || fail "the unit is not Type=notify"
grep -qx 'ExecStartPre=/usr/bin/tlsgate check --config /etc/tlsgate/tlsgate.toml' "$unit" \
  || fail "the unit does not check the configuration before it starts"
grep -qx 'ExecStartPre=+/bin/chown tlsgate:tlsgate /run/tlsgate' "$unit" \
  || fail "the unit does not give /run/tlsgate to the tlsgate user"
[[ ! -e /etc/systemd/system/multi-user.target.wants/tlsgate.service ]] \
  || fail "the unit was enabled at installation (the PCI addresses are still the examples)"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$unit" >"$scratch/verify.log" 2>&1 && [[ ! -s "$scratch/verify.log" ]] \
    || { cat "$scratch/verify.log" >&2; fail "systemd-analyze verify $unit"; }
  step "systemd-analyze verify: the unit is clean"
else
  step "systemd-analyze not installed: unit not verified"
fi

# --- an upgrade keeps the CA and the configuration --------------------------------
fingerprint="$(tlsgate ca show --dir /etc/tlsgate/ca | sed -n 's/^SHA-256: *//p')"
echo "# edited by the operator" >>/etc/tlsgate/tlsgate.toml
dpkg -i --force-confold "$deb" >"$scratch/upgrade.log" 2>&1 || { cat "$scratch/upgrade.log" >&2; fail "dpkg -i over itself"; }
[[ "$(tlsgate ca show --dir /etc/tlsgate/ca | sed -n 's/^SHA-256: *//p')" == "$fingerprint" ]] \
  || fail "reinstalling replaced the CA"
grep -q "^# edited by the operator" /etc/tlsgate/tlsgate.toml || fail "reinstalling lost the operator's edit"
step "reinstalled over itself: CA and edited configuration kept"

# --- the installed tlsgate intercepts HTTPS in the lab ------------------------------
# As the unit runs it, but in the namespace lab: the shipped configuration with
# the lab's af_packet ports and EAL on anonymous memory instead of the example
# NICs and hugepages, and the lab origin's certificate as the upstream trust;
# the CA made by postinst, the log directory and the control socket are the
# installed ones (/run/tlsgate, made above as the unit makes it).
# Readiness is awaited as systemd awaits it: READY=1 on NOTIFY_SOCKET.
step "the installed tlsgate in the lab (waiting for the lab lock)"
# The lab tests' lock; a caller that already holds it (a developer running the
# whole suite under it while others share the machine) says so with
# TLSGATE_LAB_LOCK_HELD=1, or this would wait for itself.
if [[ "${TLSGATE_LAB_LOCK_HELD:-}" != 1 ]]; then
  exec 9>/tmp/tlsgate-lab.lock
  flock 9
fi
lab_up=1
bash scripts/lab-up.sh >/dev/null
bash tests/lab/origin.sh start "$scratch/origin"
. scripts/lab-env.sh
sed -e 's|^eal_args = .*|eal_args = ["--no-huge", "-m", "512", "--no-shconf", "--no-pci", "-l", "0-1"]|' \
    -e '/^            "--file-prefix"/d' \
    -e "s|^device = \"0000:03:00.0\"|device = \"$(tg_lab_device 0 "$TG_GWC_IF")\"|" \
    -e "s|^device = \"0000:03:00.1\"|device = \"$(tg_lab_device 1 "$TG_GWS_IF")\"|" \
    -e "s|^upstream_trust = .*|upstream_trust = \"$scratch/origin/origin.crt\"|" \
    /etc/tlsgate/tlsgate.toml >"$scratch/lab.toml"
grep -q "iface=$TG_GWS_IF" "$scratch/lab.toml" || fail "could not point the shipped configuration at the lab"
python3 -c '
import os, socket, sys
systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
systemd.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)  # world-writable as systemd makes it: tlsgate notifies after its privilege drop
print(systemd.recv(4096).decode())
' "$scratch/notify.sock" >"$scratch/notify.log" &
notify_pid=$!
for _ in $(seq 100); do [[ -S "$scratch/notify.sock" ]] && break; sleep 0.05; done
ip netns exec "$TG_NS_GW" env NOTIFY_SOCKET="$scratch/notify.sock" \
  tlsgate run --config "$scratch/lab.toml" >"$scratch/run.log" 2>&1 &
tlsgate_pid=$!
wait -n "$notify_pid" "$tlsgate_pid" || true
grep -qx "READY=1" "$scratch/notify.log" \
  || { cat "$scratch/run.log" >&2; fail "the installed tlsgate did not send READY=1 on NOTIFY_SOCKET"; }
# Ready means the ports are up and the privilege drop is done: every thread
# is the tlsgate user now, with no capability.
for status in /proc/"$tlsgate_pid"/task/*/status; do
  uid="$(awk '/^Uid:/ {print $2 "," $3 "," $4 "," $5}' "$status")"
  caps="$(awk '/^CapEff:|^CapPrm:/ {print $2}' "$status" | sort -u)"
  [[ "$uid" == "$(id -u tlsgate),$(id -u tlsgate),$(id -u tlsgate),$(id -u tlsgate)" && "$caps" == 0000000000000000 ]] \
    || fail "$status: uids $uid, capabilities $caps: the shipped [process] user did not take"
done
ip netns exec "$TG_NS_CLI" curl -fsS --max-time 30 --cacert /etc/tlsgate/ca/ca.pem \
  --resolve "origin.test:443:$TG_SRV_V4" -o "$scratch/file.bin" https://origin.test/file.bin \
  || { cat "$scratch/run.log" >&2; fail "curl through the installed tlsgate, trusting only its CA"; }
cmp -s "$scratch/file.bin" "$scratch/origin/www/file.bin" \
  || { cat "$scratch/run.log" >&2; ls -l "$scratch/file.bin" "$scratch/origin/www/file.bin" >&2
       fail "the download through tlsgate differs from the origin's file"; }
kill -TERM "$tlsgate_pid"
wait "$tlsgate_pid" || { cat "$scratch/run.log" >&2; fail "tlsgate did not stop cleanly on SIGTERM"; }
tlsgate_pid=
grep -q '"decision":"intercept"' /var/log/tlsgate/connections.jsonl \
  || fail "no intercepted connection in /var/log/tlsgate/connections.jsonl"
bash tests/lab/origin.sh stop "$scratch/origin"
bash scripts/lab-down.sh >/dev/null
lab_up=
[[ "${TLSGATE_LAB_LOCK_HELD:-}" == 1 ]] || flock -u 9
step "the installed tlsgate sent READY=1 and intercepted a 1 MiB HTTPS download in the lab, logged to /var/log/tlsgate"

# --- purge --------------------------------------------------------------------
step "dpkg --purge"
dpkg --purge tlsgate >"$scratch/purge.log" 2>&1 || { cat "$scratch/purge.log" >&2; fail "dpkg --purge"; }
for path in /usr/bin/tlsgate /etc/tlsgate /var/log/tlsgate /var/lib/tlsgate "$unit" \
            /usr/share/man/man1/tlsgate.1 /usr/share/bash-completion/completions/tlsgate; do
  [[ ! -e "$path" ]] || fail "$path is still there after the purge"
done
# Kept on purpose, as Debian does with system users (see debian/postrm).
getent passwd tlsgate >/dev/null || fail "the purge removed the tlsgate user (it is meant to be kept)"
step "purged: files, configuration, CA, logs gone; the tlsgate system user kept"
step "the package installs, runs and purges cleanly"
