# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit host venv clean

demo: host venv
	$(BIN)/cilia demo

test: host venv lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests

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
