# Two set-up commands: `make demo` (main job on the embedded default) and `make test`.
# Both bootstrap .venv on a fresh machine and skip the install when it is up to date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: test typecheck demo setup syslibs bench chromium screenshot clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory syslibs
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	@touch $(STAMP)

# open3d needs libusb-1.0, libGL and libEGL at import time.
syslibs:
	@missing=""; \
	for lib in libusb-1.0.so.0:libusb-1.0-0 libGL.so.1:libgl1 libEGL.so.1:libegl1; do \
	  so=$${lib%%:*}; pkg=$${lib##*:}; \
	  ldconfig -p 2>/dev/null | grep -q "$$so" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system libraries for open3d:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "open3d needs system libraries; run: sudo apt-get install -y$$missing"; \
	  fi; \
	fi

# Lint and types first (seconds): a formatting, lint or type error is reported before the suite runs.
test: $(STAMP) typecheck
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m pytest -q

# mypy on the installed package layout: recon.kernels etc. live in top-level folders (pyproject's package-dir),
# which mypy cannot map, so it reads them through a tree of links in build/typecheck (its cache beside it).
typecheck: $(STAMP)
	@rm -rf build/typecheck/recon && mkdir -p build/typecheck/recon
	@for e in recon/*; do ln -s "$(CURDIR)/$$e" build/typecheck/recon/; done
	@for d in kernels datasets eval viz; do ln -s "$(CURDIR)/$$d" build/typecheck/recon/$$d; done
	cd build/typecheck && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
	  --python-executable $(CURDIR)/$(PY) --cache-dir .mypy_cache --no-error-summary -p recon

demo: $(STAMP)
	$(VENV)/bin/recon demo

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Debian's Chromium, only for the viewer screenshot (bench/screenshot_viewer.py): recon itself never needs it.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the screenshot needs Chromium; run: sudo apt-get install -y chromium"; exit 1; fi; }

screenshot: $(STAMP) chromium
	$(PY) -m pip install --quiet -e '.[dev,screenshot]'
	$(PY) bench/screenshot_viewer.py

clean:
	rm -rf $(VENV) build *.egg-info demo_out
