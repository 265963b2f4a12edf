# Sluice: the two commands of the README, plus the long runs.
#   make run    installs what is missing, builds, starts a gateway on 127.0.0.1:2525
#   make test   installs what is missing, builds, runs every test suite
SHELL := /bin/bash
BUILD ?= build
# Debian packages, by what needs them (README "Packages" lists each and why). Installed
# with --no-install-recommends, so what a tool only recommends but our tests use is named
# here (swaks' Perl modules for TLS and AUTH); tests/preflight.sh checks each capability.
DEBS_BUILD := build-essential pkg-config meson ninja-build libuv1-dev libmbedtls-dev liblmdb-dev \
        libtomlplusplus-dev libgtest-dev libbenchmark-dev libcrypt-dev nlohmann-json3-dev zlib1g-dev \
        libc-ares-dev
DEBS_TEST := lmdb-utils mount postfix swaks libnet-ssleay-perl libauthen-sasl-perl \
        libio-socket-inet6-perl python3 python3-pytest python3-aiosmtpd python3-prometheus-client openssl \
        ca-certificates haproxy util-linux python3-dnslib prometheus
DEBS_SLOW := testssl.sh bsdextrautils dnsutils procps
DEBS_BENCH := curl
DEBS_FUZZ := clang-14 libclang-rt-14-dev
# make deb / make test-package: debhelper builds, lintian checks, adduser serves the
# maintainer scripts, systemd gives systemd-analyze (the unit's security rating).
DEBS_PACKAGE := debhelper lintian dpkg-dev adduser systemd
DEBS := $(DEBS_BUILD) $(DEBS_TEST) $(DEBS_SLOW) $(DEBS_BENCH) $(DEBS_FUZZ) $(DEBS_PACKAGE)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-test deps-slow deps-bench deps-fuzz deps-package build run test test-slow \
        bench soak fuzz deb test-package clean format

all: build

# Only packages that are not installed yet are fetched. Postfix is installed for its
# smtp-source/smtp-sink tools; its MTA is never started (policy-rc.d denies it).
# `make deps` installs everything every target uses; each target installs its own share.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	  $(SUDO) chmod +x /usr/sbin/policy-rc.d; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; $(SUDO) rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi
endef

deps:
	$(call install_missing,$(DEBS))

deps-test:
	$(call install_missing,$(DEBS_BUILD) $(DEBS_TEST))

deps-bench:
	$(call install_missing,$(DEBS_BENCH))

deps-slow:
	$(call install_missing,$(DEBS_SLOW))

deps-fuzz:
	$(call install_missing,$(DEBS_FUZZ))

deps-package:
	$(call install_missing,$(DEBS_BUILD) $(DEBS_PACKAGE))

$(BUILD)/build.ninja:
	meson setup $(BUILD)

build: deps-test $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: build
	@packaging/run-example.sh $(BUILD)

# The preflight names the package behind any missing capability before a suite trips on it.
test: build
	tests/preflight.sh
	meson test -C $(BUILD) --print-errorlogs --num-processes 2 --suite unit --suite integration

# Long suites: testssl.sh against a live STARTTLS listener (minutes).
test-slow: build deps-slow
	tests/preflight.sh --slow
	meson test -C $(BUILD) --print-errorlogs --suite slow

# The Debian package (debian/, built from a copy of the tree) into $(BUILD)/deb/, lintian
# clean. DEB_VERSION=X adds a changelog entry (a newer, rebuilt package).
deb: deps-package
	packaging/make-deb.sh $(BUILD)/deb $(DEB_VERSION)

# Installs, upgrades, removes and purges the package on this machine (root; minutes).
test-package: deps-package deps-test
	tests/preflight.sh --package
	packaging/test-package.sh $(BUILD)

bench: build deps-bench
	tests/preflight.sh --bench
	bench/run-all.sh $(BUILD)

# A long run at half the measured maximum rate with a flapping next hop, slow clients and
# reloads every 10 s; RSS, fds, queue and p99 time-to-durable at the start and the end.
SOAK_SECONDS ?= 1800
soak: build
	/usr/bin/python3 bench/soak.py $(BUILD) $(SOAK_SECONDS)

fuzz: deps-fuzz
	tests/fuzz/run.sh

format:
	git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
