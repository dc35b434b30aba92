# Two commands set everything up on a fresh machine:
#   make serve   install the API and start it on its embedded defaults
#   make test    install everything (model + training stacks, CPU torch) and run the suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8080
PYTEST_ARGS ?=

.PHONY: serve test install install-test bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e .

# torch first, pinned, so pip takes the CPU wheel on disk instead of a CUDA download.
install-test: $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	@# The sandbox page's browser tests drive Debian's headless Chromium (Playwright, no browser
	@# download). Installed when missing and apt-get can run (root); otherwise those tests say so.
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
		|| echo "warning: could not install chromium (the sandbox browser tests need it)"; \
	fi

# With no TRIAGE_CLIENTS_FILE the demo runs without JWT checks (loopback only; the service
# logs a warning). Name a clients file to require CDS Hooks client JWTs.
serve: install
	@if [ -z "$$TRIAGE_CLIENTS_FILE" ]; then export TRIAGE_INSECURE_NO_AUTH=$${TRIAGE_INSECURE_NO_AUTH:-1}; fi; \
	export TRIAGE_SANDBOX=$${TRIAGE_SANDBOX:-1}; \
	exec $(VENV)/bin/triage serve --host $(HOST) --port $(PORT)

test: install-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install-test
	for b in $(filter-out bench/gpu_check.py,$(wildcard bench/*.py)); do $(PY) $$b || exit 1; done  # gpu_check: GPU machines only

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
