#!/bin/sh
# sluice.toml(5) from `sluiced --schema`: every config key with its type, default and
# meaning comes from the one schema (common/config.cpp), so the man page cannot drift.
#   make-sluice-toml-5.sh SLUICED VERSION > sluice.toml.5
set -eu
sluiced=$1
version=$2
cat <<HEAD
.TH SLUICE.TOML 5 "" "sluice $version" "File Formats"
.SH NAME
sluice.toml \- configuration of the Sluice SMTP gateway
.SH SYNOPSIS
.I /etc/sluice/sluice.toml
.SH DESCRIPTION
The configuration of
.BR sluiced (8)
is a TOML file. Every duration and size takes a unit ("5m", "25MiB"), unknown keys are
errors, relative paths are relative to the directory of the file, and every problem is
reported as FILE:LINE:COL, not just the first.
.B sluiced \-\-check
validates a file;
.B sluicectl reload
applies it to the running daemon, all or nothing.
.PP
Listeners are an array of tables,
.BR [[listener]] ,
one per address. Routes map a recipient domain (or "*") to
.B smtp://HOST:PORT
or
.BR maildir:PATH .
.SH KEYS
The keys below are generated from
.BR "sluiced \-\-schema" .
HEAD
"$sluiced" --schema | awk '
function esc(s) { gsub(/\\/, "\\e", s); gsub(/-/, "\\-", s); return s }
{
    n = split($0, f, /  +/)
    key = f[1]
    section = key; sub(/\..*/, "", section)
    if (section != last) {
        printf ".SS [%s]\n", section == "listener" ? "[listener]" : section
        last = section
    }
    if (n < 4) {
        # routes.DOMAIN: a free-form line
        printf ".TP\n.B %s\n%s\n", esc(key), esc(f[2])
        next
    }
    def = f[3]; sub(/^default=/, "", def)
    printf ".TP\n.BR %s \" (%s; default %s)\"\n%s\n", esc(key), esc(f[2]), esc(def), esc(f[4])
}'
cat <<TAIL
.SH SERVING AS AN UNPRIVILEGED USER
Started as root,
.B sluiced
opens its listeners, certificate, stats listener and control socket, then serves as
.B server.user
and
.B server.group
(default sluice) with that user's supplementary groups and the capability
CAP_NET_BIND_SERVICE alone. It refuses to serve as root unless
.BR "server.allow_root = true" .
.SH FILES
.TP
.I /etc/sluice/sluice.toml
the configuration the systemd unit starts with
.TP
.I /var/lib/sluice/spool
the queue (spool.dir)
.TP
.I /var/lib/sluice/maps
the LMDB maps (maps.dir)
.TP
.I /run/sluice/control.sock
the control socket of
.BR sluicectl (8)
.SH SEE ALSO
.BR sluiced (8),
.BR sluicectl (8)
TAIL
