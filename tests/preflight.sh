#!/usr/bin/env bash
# The first test of `make test`: every capability the suites rely on, each checked the
# way the suites use it, so that a missing package is one clear line naming it instead of
# a confusing failure deep in a suite. `make deps` installs all of them (Makefile DEBS).
#   tests/preflight.sh           what `make test` needs
#   tests/preflight.sh --slow    also what `make test-slow` needs
#   tests/preflight.sh --bench   also what `make bench` needs
#   tests/preflight.sh --package what `make test-package` needs
set -u
# smtp-source, smtp-sink and haproxy live in /usr/sbin, which a non-root PATH lacks; the
# suites call them by absolute path.
PATH=$PATH:/usr/sbin:/sbin
missing=0

# need PACKAGE WHAT COMMAND...: COMMAND must succeed, else PACKAGE is named.
need() {
    local pkg=$1 what=$2
    shift 2
    if ! "$@" >/dev/null 2>&1; then
        echo "preflight: missing $what: install Debian package '$pkg' (make deps)"
        missing=$((missing + 1))
    fi
}

# swaks lists what its optional Perl modules give it; TLS and AUTH are recommends only.
swaks_support() {
    swaks --support 2>&1 | grep -qx "=== $1 supported"
}

py_module() {
    /usr/bin/python3 -c "import $1"
}

need swaks "swaks" command -v swaks
need libnet-ssleay-perl "swaks STARTTLS (Net::SSLeay)" swaks_support TLS
need libauthen-sasl-perl "swaks AUTH DIGEST-MD5 (Authen::SASL)" swaks_support "AUTH DIGEST-MD5"
need libio-socket-inet6-perl "swaks on ::1 (IO::Socket::INET6)" swaks_support IPv6
need postfix "smtp-source (Postfix's load generator)" command -v smtp-source
need postfix "smtp-sink (Postfix's test next hop)" command -v smtp-sink
need openssl "openssl (test certificates)" command -v openssl
need lmdb-utils "mdb_stat (LMDB map inspection)" command -v mdb_stat
need mount "mount and umount (a small tmpfs for the spool's full-disk tests)" command -v umount
need python3-pytest "Python module pytest" py_module pytest
need python3-aiosmtpd "Python module aiosmtpd" py_module aiosmtpd.controller
need python3-prometheus-client "Python module prometheus_client" \
    py_module prometheus_client.parser
need python3-dnslib "Python module dnslib (the tests' DNS server)" py_module dnslib.server
need libc-ares-dev "c-ares headers (the resolver)" test -f /usr/include/ares.h
need ca-certificates "the system CA store" test -s /etc/ssl/certs/ca-certificates.crt
need haproxy "haproxy (a real load balancer sending PROXY v1/v2 headers)" haproxy -v
need util-linux "setpriv (clients and daemons run as other users)" command -v setpriv
need prometheus "promtool (alert rules, /metrics format)" command -v promtool

if [ "${1:-}" = "--slow" ]; then
    need testssl.sh "testssl.sh" command -v testssl
    need dnsutils "dig (testssl.sh)" command -v dig
fi
if [ "${1:-}" = "--bench" ]; then
    need curl "curl (bench scripts read /metrics)" command -v curl
fi

if [ "${1:-}" = "--package" ]; then
    need debhelper "dh (make deb)" command -v dh
    need dpkg-dev "dpkg-buildpackage (make deb)" command -v dpkg-buildpackage
    need lintian "lintian (make deb)" command -v lintian
    need adduser "adduser (the package's maintainer scripts)" command -v adduser
    need systemd "systemd-analyze (the unit's security rating)" command -v systemd-analyze
    need swaks "swaks" command -v swaks
    need python3-aiosmtpd "Python module aiosmtpd (the next hop)" py_module aiosmtpd.controller
fi

if [ "$missing" -gt 0 ]; then
    echo "preflight: $missing capabilities missing"
    exit 1
fi
echo "preflight: every capability the suites use is here"
