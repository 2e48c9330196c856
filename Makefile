# mlwarden — set-up, demo and tests. Everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO   ?= demo-out

.PHONY: setup system-deps demo test lint typecheck unit bench clean

setup: system-deps $(STAMP)

# Debian packages the sandbox needs: bubblewrap (namespaces), strace, libseccomp2 (the seccomp filter is compiled
# by libseccomp, through the pyseccomp binding of the `sandbox` extra), util-linux (prlimit sets the rlimits,
# setpriv drops root to the sandbox's own uid). Installed when missing and we are root; otherwise the command to
# run is printed and dynamic analysis reports the sandbox as unavailable. redis-server: the shared per-client state
# of `mlwarden serve --workers N` (tests start a throw-away one); wrk: the load generator of benchmarks/guard_load.py.
SYSTEM_PKGS := bubblewrap strace libseccomp2 util-linux redis-server wrk
system-deps:
	@if command -v bwrap >/dev/null && command -v strace >/dev/null && command -v prlimit >/dev/null \
		&& command -v setpriv >/dev/null && /sbin/ldconfig -p | grep -q 'libseccomp\.so\.2' \
		&& command -v redis-server >/dev/null && command -v wrk >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PKGS) >/dev/null; \
	else echo "install the Debian packages $(SYSTEM_PKGS) (sudo apt-get install $(SYSTEM_PKGS))"; fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# Build benign models and harmless-canary malicious ones, scan both folders and print the reports; then take one
# benign model through its life: sign, register, approve by a second user, deploy, verify the audit log.
demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	PYTHONPATH=testkit $(PY) -m mlwarden_samples demo $(DEMO)
	@echo; echo "== scanning benign models (expect PASS, exit 0) =="
	$(VENV)/bin/mlwarden scan --no-progress $(DEMO)/benign
	@echo; echo "== scanning malicious canaries (expect FAIL, exit 1) =="
	$(VENV)/bin/mlwarden scan --no-progress $(DEMO)/malicious; test $$? -eq 1
	@echo; echo "demo: OK — benign models pass, every malicious canary fails the scan (no canary ran)"
	@test -z "$$(ls -A $(DEMO)/canary 2>/dev/null)"
	scripts/demo-lifecycle $(DEMO) $(VENV)/bin/mlwarden
	scripts/demo-guard $(DEMO) $(VENV)/bin/mlwarden

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks testkit
	$(VENV)/bin/ruff format --check src tests benchmarks testkit
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

# The registry's tests run on SQLite and on PostgreSQL: scripts/pg-test-server installs (as root, via apt) and
# starts a throw-away server on 127.0.0.1 and prints its URL; without one the PostgreSQL variants are skipped
# locally and fail under CI.
unit: setup
	MLWARDEN_TEST_POSTGRES_URL="$${MLWARDEN_TEST_POSTGRES_URL:-$$(scripts/pg-test-server)}" \
		$(PY) -m pytest -q -n 2 -p no:cacheprovider

test: lint typecheck unit

# Peer scanners live in their own venv: modelscan pins rich<15, which conflicts with mlwarden's deps.
# Versions are pinned so that benchmark figures are reproducible; extras give each peer its best shot
# (h5py: modelscan's .h5 scanner; py7zr: picklescan/fickling 7z support; typing_extensions: fickling
# imports it without declaring it; numpy<2.3: modelscan 0.8.8 calls numpy.lib.format._check_version,
# gone in numpy 2.3, and would fail on every .npy). No peer needs torch: they parse the pickles.
PEERS_VENV  ?= .venv-peers
PEERS_PKGS  := 'modelscan[h5py]==0.8.8' 'picklescan[7z]==1.0.5' 'fickling==0.1.12' typing_extensions 'numpy<2.3'
PEERS_STAMP := $(PEERS_VENV)/.installed-$(shell echo $(PEERS_PKGS) | cksum | cut -d' ' -f1)

.PHONY: bench-setup
bench-setup: setup $(PEERS_STAMP)

$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet $(PEERS_PKGS)
	rm -f $(PEERS_VENV)/.installed-* && touch $@

# Batch drift peers (benchmarks/drift.py): Evidently and alibi-detect, pinned, in their own venv.
DRIFT_PEERS_VENV := .venv-drift-peers
DRIFT_PEERS_PKGS := 'evidently==0.7.23' 'alibi-detect==0.13.0' pandas pyarrow
.PHONY: bench-drift-setup
bench-drift-setup: setup
	test -x $(DRIFT_PEERS_VENV)/bin/python || $(PYTHON) -m venv $(DRIFT_PEERS_VENV)
	$(DRIFT_PEERS_VENV)/bin/python -m pip install --quiet $(DRIFT_PEERS_PKGS)

# Measures and prints (never asserts); raw numbers go to bench-out/*.json. See benchmarks/README.md.
bench: bench-setup
	$(PY) benchmarks/detection.py
	$(PY) benchmarks/small_models.py
	$(PY) benchmarks/large_checkpoint.py
	$(PY) benchmarks/signing.py
	$(PY) benchmarks/audit.py
	$(PY) benchmarks/guard_load.py

clean:
	rm -rf $(VENV) .venv-peers $(DEMO) bench-out .pytest_cache .mypy_cache .ruff_cache
