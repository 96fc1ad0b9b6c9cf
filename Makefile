# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit host venv clean

demo: host venv
	$(BIN)/cilia demo

# Every tier: unit first (guarded as in `make unit`), then bus, kernel and lab.
test: host venv lint typecheck unit
	$(BIN)/pytest -q -p no:cacheprovider tests/bus tests/kernel tests/lab

# The pure tier alone (< 30 s): no conftest, no capabilities, no bcc, no nats-server.
unit: venv
	setpriv --bounding-set=-all --inh-caps=-all -- \
	  $(BIN)/pytest -q -p no:cacheprovider --noconftest -p tests.support.unitguard tests/unit

lint: venv
	$(BIN)/ruff check services tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

host:
	@bash deploy/host/setup.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@# bcc is Debian's (python3-bpfcc); expose only that package to the venv.
	ln -sfn /usr/lib/python3/dist-packages/bcc "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"
	@touch $(STAMP)

clean:
	rm -rf $(VENV)
