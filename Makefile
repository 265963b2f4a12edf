# Sluice: the two commands of the README, plus the long runs.
#   make run    installs what is missing, builds, starts a gateway on 127.0.0.1:2525
#   make test   installs what is missing, builds, runs every test suite
SHELL := /bin/bash
BUILD ?= build
DEBS := build-essential pkg-config meson ninja-build libuv1-dev libmbedtls-dev liblmdb-dev \
        lmdb-utils libtomlplusplus-dev libgtest-dev libbenchmark-dev libcrypt-dev postfix swaks \
        python3 python3-pytest python3-aiosmtpd python3-prometheus-client openssl nlohmann-json3-dev \
        zlib1g-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps build run test test-slow bench fuzz clean format

all: build

# Only packages that are not installed yet are fetched. Postfix is installed for its
# smtp-source/smtp-sink tools; its MTA is never started (policy-rc.d denies it).
deps:
	@missing=""; for p in $(DEBS); do \
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

$(BUILD)/build.ninja:
	meson setup $(BUILD)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

run: build
	@packaging/run-example.sh $(BUILD)

test: build
	meson test -C $(BUILD) --print-errorlogs --num-processes 2 --suite unit --suite integration

# Long suites: testssl.sh against a live STARTTLS listener (minutes).
test-slow: build
	@dpkg-query -W -f='$${Status}' testssl.sh 2>/dev/null | grep -q 'ok installed' || \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq testssl.sh
	meson test -C $(BUILD) --print-errorlogs --suite slow

bench: build
	bench/run-all.sh $(BUILD)

fuzz:
	@dpkg-query -W -f='$${Status}' clang-14 libclang-rt-14-dev 2>/dev/null | grep -c 'ok installed' | grep -q 2 || \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq clang-14 libclang-rt-14-dev
	tests/fuzz/run.sh

format:
	git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
