#!/usr/bin/env bash
# `make test-package`: the Debian package on this machine, end to end.
#   build the .deb (and a rebuilt, newer one), lintian, dpkg -i, start the installed
#   sluiced the way sluice.service does (user sluice, CAP_NET_BIND_SERVICE only, via
#   setpriv: systemd is not PID 1 here), mail through it with swaks to a maildir route,
#   upgrade while a message waits in the queue (nothing lost), remove, purge, and check
#   that nothing of the package is left.
# Every process it starts is stopped by its own pid. Traffic stays on 127.0.0.1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
out="$root/$build/deb"
tmp=$(mktemp -d /tmp/sluice-package.XXXXXX)
unit=/lib/systemd/system/sluice.service
conf=/etc/sluice/sluice.toml
daemon_pid="" hop_pid=""
step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; [ -f "$tmp/sluiced.log" ] && tail -20 "$tmp/sluiced.log"; exit 1; }
cleanup() {
    for p in $daemon_pid $hop_pid; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "make test-package installs a package: run it as root"
free_port() { /usr/bin/python3 -c 'import socket,sys
lo, hi = int(sys.argv[1]), int(sys.argv[2])
import random
for p in random.sample(range(lo, hi), hi - lo):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass
    finally: s.close()' "$@"; }
wait_for() { # wait_for SECONDS COMMAND...
    local n=$(($1 * 10)); shift
    while ! "$@" >/dev/null 2>&1; do n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.1; done
}

# As sluice.service: ExecStartPre (--check), then ExecStart as User=sluice with
# AmbientCapabilities=CAP_NET_BIND_SERVICE and CapabilityBoundingSet= the same;
# RuntimeDirectory=sluice (0750) made as systemd would.
start_as_unit() {
    local pre start
    pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
    start=$(sed -n 's/^ExecStart=//p' "$unit")
    install -d -o sluice -g sluice -m 0750 /run/sluice
    local as_unit=(setpriv --reuid=sluice --regid=sluice --init-groups
        --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service
        --bounding-set=-all,+net_bind_service --no-new-privs)
    "${as_unit[@]}" $pre >>"$tmp/sluiced.log" 2>&1 || fail "ExecStartPre ($pre)"
    "${as_unit[@]}" $start >>"$tmp/sluiced.log" 2>&1 &
    daemon_pid=$!
    wait_for 60 grep -q "event=started" "$tmp/sluiced.log" || fail "sluiced did not start"
    [ "$(grep -c event=started "$tmp/sluiced.log")" -ge "${1:-1}" ] ||
        wait_for 60 test "$(grep -c event=started "$tmp/sluiced.log")" -ge "${1:-1}" ||
        fail "sluiced did not start again"
    ok "sluiced runs as the unit runs it (pid $daemon_pid): $(grep -E '^(Uid|CapEff)' /proc/$daemon_pid/status | tr -s '\t\n' '  ')"
}
stop_daemon() { # as systemd does on stop: SIGTERM, wait
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || fail "sluiced exited non-zero on SIGTERM"
    daemon_pid=""
    rm -rf /run/sluice  # RuntimeDirectory= goes with the service
}
# sluicectl as an operator: not root, only in group sluice.
operator() { setpriv --reuid=nobody --regid=nogroup --groups="$(getent group sluice | cut -d: -f3)" \
    /usr/bin/sluicectl --config "$conf" "$@"; }

step "build the package and a rebuilt, newer one (lintian: no errors, no warnings)"
export DEB_WORK="$out/work"
"$root/packaging/make-deb.sh" "$out/v1"
"$root/packaging/make-deb.sh" "$out/v2" 0.1.0+rebuild1
v1=$(ls "$out"/v1/sluice_0.1.0_*.deb)
v2=$(ls "$out"/v2/sluice_0.1.0+rebuild1_*.deb)
if dpkg-query -W -f='${Status}' sluice 2>/dev/null | grep -q installed; then
    echo "a sluice package is installed: purging it first"
    dpkg -P sluice >/dev/null
fi

step "install $v1"
dpkg -i "$v1"
getent passwd sluice >/dev/null || fail "no user sluice"
getent group sluice >/dev/null || fail "no group sluice"
for d in /var/lib/sluice/spool /var/lib/sluice/maps; do
    [ "$(stat -c %U:%G "$d")" = sluice:sluice ] || fail "$d is $(stat -c %U:%G "$d")"
done
dpkg-query -W -f='${Conffiles}\n' sluice | grep -q "$conf" || fail "$conf is not a conffile"
for f in /usr/sbin/sluiced /usr/bin/sluicectl "$unit" /usr/share/man/man5/sluice.toml.5.gz \
    /usr/share/man/man8/sluiced.8.gz /usr/share/man/man8/sluicectl.8.gz \
    /usr/share/bash-completion/completions/sluicectl /usr/share/doc/sluice/README.md.gz; do
    [ -e "$f" ] || fail "missing $f"
done
ok "user and group sluice, /var/lib/sluice/{spool,maps} theirs, conffile, man pages, completion"
# --threshold counts tenths: 20 is an exposure level of 2.0.
systemd-analyze security --offline=true --threshold=20 "$unit" | tail -1 ||
    fail "systemd-analyze security rates $unit above 2.0"

step "configure (an operator's edit of the conffile) and start as the unit does"
mx=$(free_port 600 1024)     # below 1024: only CAP_NET_BIND_SERVICE lets user sluice bind it
stats=$(free_port 20000 30000)
hop=$(free_port 30000 40000)  # the next hop of queue.test: down until after the upgrade
sed -i -e "s/^address = \"0.0.0.0:25\"/address = \"127.0.0.1:$mx\"/" \
    -e "s/^local = \[\"example.invalid\"\]/local = [\"example.test\", \"queue.test\"]/" \
    -e "s|^\"example.invalid\" = .*|\"example.test\" = \"maildir:/var/lib/sluice/maildir\"\n\"queue.test\" = \"smtp://127.0.0.1:$hop\"|" \
    -e "s/^address = \"127.0.0.1:9125\"/address = \"127.0.0.1:$stats\"/" "$conf"
start_as_unit 1
operator status >/dev/null || fail "an operator in group sluice cannot use sluicectl"
if setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/bin/sluicectl --config "$conf" status >/dev/null 2>&1; then
    fail "a user outside group sluice reached the control socket"
fi
ok "sluicectl works for group sluice, not for others"
operator map add access "@blocked.test" "REJECT not here" >/dev/null || fail "map add by an operator"
setpriv --reuid=sluice --regid=sluice --init-groups $(sed -n 's/^ExecReload=//p' "$unit") >/dev/null ||
    fail "ExecReload"
ok "ExecReload (sluicectl reload) as user sluice"

step "mail through it with swaks"
swaks --server "127.0.0.1:$mx" --from a@outside.test --to user@example.test \
    --header "Subject: package-maildir" >"$tmp/swaks1.log" 2>&1 || { cat "$tmp/swaks1.log"; fail "swaks to the maildir route"; }
wait_for 30 grep -rlq "package-maildir" /var/lib/sluice/maildir/new || fail "no maildir file"
f=$(grep -rl "package-maildir" /var/lib/sluice/maildir/new | head -1)
[ "$(stat -c %U "$f")" = sluice ] || fail "$f is not sluice's"
ok "delivered to the maildir route: $f"
swaks --server "127.0.0.1:$mx" --from a@outside.test --to b@queue.test \
    --header "Subject: package-queued" >"$tmp/swaks2.log" 2>&1 || { cat "$tmp/swaks2.log"; fail "swaks to queue.test"; }
wait_for 30 bash -c "$(declare -f operator); conf=$conf; operator queue list | grep -q b@queue.test" ||
    fail "the message for queue.test is not queued"
ok "a message waits in the queue (its next hop is down)"

step "upgrade to $v2 while it waits"
dpkg -i "$v2"
# systemd would restart the service after the upgrade (dh_installsystemd); here we do.
stop_daemon
start_as_unit 2
[ "$(dpkg-query -W -f='${Version}' sluice)" = 0.1.0+rebuild1 ] || fail "not upgraded"
grep -q "127.0.0.1:$mx" "$conf" || fail "the edited conffile was replaced"
operator queue list | grep -q b@queue.test || fail "the queued message was lost in the upgrade"
operator map get access "@blocked.test" | grep -q REJECT || fail "the map was lost in the upgrade"
ok "upgraded: conffile edit, queued message and map kept"

step "the next hop comes up: the queued message is delivered"
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$hop" >"$tmp/hop.log" 2>&1 &
hop_pid=$!
wait_for 30 bash -c "echo > /dev/tcp/127.0.0.1/$hop" || fail "next hop did not start"
operator queue flush >/dev/null
wait_for 60 grep -q "package-queued" "$tmp/hop.log" || fail "the queued message never arrived"
wait_for 30 bash -c "$(declare -f operator); conf=$conf; ! operator queue list | grep -q b@queue.test" ||
    fail "delivered but still queued"
ok "delivered after the upgrade: nothing lost"
kill "$hop_pid"; wait "$hop_pid" 2>/dev/null || true; hop_pid=""

step "remove: stopped, data kept"
stop_daemon  # prerm's deb-systemd-invoke stop, which needs systemd as PID 1
dpkg -r sluice
[ ! -e /usr/sbin/sluiced ] || fail "/usr/sbin/sluiced left after remove"
[ -d /var/lib/sluice/spool ] && [ -d /var/lib/sluice/maps ] || fail "remove deleted the data"
[ -e "$conf" ] || fail "remove deleted the conffile"
ok "binaries gone; /var/lib/sluice and $conf kept"

step "purge: nothing left"
dpkg -P sluice
left=""
for p in /var/lib/sluice /etc/sluice /run/sluice /usr/sbin/sluiced /usr/bin/sluicectl "$unit" \
    /usr/share/doc/sluice /usr/share/sluice /usr/share/man/man5/sluice.toml.5.gz \
    /usr/share/bash-completion/completions/sluicectl \
    /etc/systemd/system/multi-user.target.wants/sluice.service \
    /var/lib/systemd/deb-systemd-helper-enabled/sluice.service.dsh-also; do
    [ -e "$p" ] || [ -L "$p" ] && left="$left $p"
done
[ -z "$left" ] || fail "left after purge:$left"
! getent passwd sluice >/dev/null || fail "user sluice left after purge"
! getent group sluice >/dev/null || fail "group sluice left after purge"
! dpkg-query -W sluice >/dev/null 2>&1 || fail "dpkg still knows sluice"
ok "no file, directory, account or dpkg record of sluice left"
printf '\nmake test-package: every step passed\n'
