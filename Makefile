# cxr-augment: every target installs what it needs into .venv first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/local.yaml
ARGS   ?=

.PHONY: install demo test test-fast bench clean-runs help

help:
	@echo "make demo    run the main job on the embedded default ($(CONFIG))"
	@echo "make test    install and run the whole test suite (all but gpu-marked tests)"
	@echo "make bench   run the benchmarks (writes bench/results/*.json)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: they come from this machine's disk (see README)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	@# The page's browser test (tests/services/test_page_browser.py) drives Debian's chromium through
	@# chromium-driver; without them it is skipped. Installed here when missing and we are root with
	@# apt-get; a failure only prints a note (the log is $(VENV)/apt-chromium.log).
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get) for the page's browser test"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
	      || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }; \
	    } >$(VENV)/apt-chromium.log 2>&1 \
	      || echo "note: chromium/chromium-driver could not be installed (see $(VENV)/apt-chromium.log); the browser test will be skipped"; \
	  else \
	    echo "note: chromium or chromedriver not found and not root with apt-get: the browser test will be skipped"; \
	  fi; \
	fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.pipeline --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow" $(ARGS)

# The model-free speed benchmarks, then the demo end to end; each writes bench/results/*.json.
# The acceptance, Ray-vs-loop and localization benches take trained models or options: see docs/benchmarks.md.
bench: $(STAMP)
	$(PY) bench/bench_registration.py
	$(PY) bench/bench_inpainting.py
	$(PY) bench/bench_classifier.py
	$(PY) bench/bench_pipeline.py --config configs/local.yaml

clean-runs:
	rm -rf runs
