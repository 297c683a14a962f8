# The two commands of the README: `make demo` runs the gateway's main job on the
# shipped examples; `make test` installs everything and runs the test suite.
# Both create .venv themselves when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages the tests use: independent crypto oracles (openssl cms, gpgsm), the private
# mail servers of the e2e suite (Postfix with smtp-source, Dovecot IMAP + LMTP), curl (the AS2
# reference sender) and headless Chromium with its driver (the dashboard's browser test)
DEB_PACKAGES := openssl gpgsm postfix dovecot-imapd dovecot-lmtpd curl chromium chromium-driver

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  echo "installing python3-venv (Debian)"; apt-get update -qq && apt-get install -y -qq python3-venv; fi
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	@echo "== the example messages (all must be valid) =="
	$(VENV)/bin/nazorg-gateway validate examples/valid
	@echo
	@echo "== broken examples (each must be rejected, with the reason) =="
	@rc=0; $(VENV)/bin/nazorg-gateway validate examples/invalid || rc=$$?; \
	  if [ $$rc -ne 1 ]; then echo "expected exit 1 (invalid), got $$rc"; exit 1; fi
	@echo
	@echo "== the whole exchange on this machine: private Postfix + Dovecot, init, run, delivered, receipted =="
	$(PY) demo/exchange.py

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/all.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
