#!/usr/bin/env bash
# `make run`: starts a working gateway on 127.0.0.1:2525 in the foreground, with the
# example config copied to ./run/. Mail accepted for example.test lands in ./run/maildir/new.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/run"
mkdir -p "$run/maps" "$run/spool" "$run/maildir"
if [ ! -f "$run/sluice.toml" ]; then
  cp "$root/packaging/sluice.toml.example" "$run/sluice.toml"
  if [ "$(id -u)" = 0 ]; then
    # Started as root, sluiced serves as [server] user (daemon/privileges.hpp); the
    # account "sluice" comes with the Debian package, so the demo uses "nobody".
    sed -i 's/^\[server\]$/[server]\nuser = "nobody"\ngroup = "nogroup"/' "$run/sluice.toml"
  fi
fi
if [ "$(id -u)" = 0 ] && grep -q '^user = "nobody"' "$run/sluice.toml"; then
  chown nobody:nogroup "$run"
  chown -R nobody:nogroup "$run/maps" "$run/spool" "$run/maildir"
fi
cat <<MSG
Sluice is starting on 127.0.0.1:2525 with $run/sluice.toml.
It accepts mail for example.test and writes each message to $run/maildir/new/.
Try:  swaks --server 127.0.0.1:2525 --from someone@outside.test --to user@example.test
Stop with Ctrl-C (SIGINT drains sessions, then exits).
MSG
exec "$root/$build/daemon/sluiced" --config "$run/sluice.toml"
