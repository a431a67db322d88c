# warmvm: `make reconcile` converges the host to specs/, `make test` runs the suite (`make test-fast`: no VM boots).
# Both set up what they need first: host packages (apt-get, as root) and .venv.
VENV     ?= .venv
PY       := $(VENV)/bin/python
WARMVM   := $(VENV)/bin/warmvm
STAMP    := $(VENV)/.installed
ARGS     ?=

.PHONY: setup image reconcile plan test test-fast lint bench bench-pool bench-disk bench-create bench-watch bench-fleet clean

# compileall: an editable install compiles nothing, and where PYTHONDONTWRITEBYTECODE is set every
# command would compile the package again (some 40 ms of each start-up)
setup: $(STAMP)
	@bash hack/install-deps.sh
	@$(PY) -m compileall -q controller >/dev/null

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: a plain path in a .pth; the default editable finder costs every command ~20 ms of start-up
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

image: setup
	bash hack/build-image.sh

reconcile: setup image
	$(WARMVM) reconcile $(ARGS)

plan: setup image
	$(WARMVM) plan $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

# every test that needs no QEMU: those that boot VMs are marked e2e (pyproject.toml)
test-fast: setup
	$(PY) -m pytest -q -m "not e2e" $(ARGS)

# the layers (.importlinter), the linter and the types; .ci/run runs it after the tests
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check controller tests hack
	$(VENV)/bin/mypy --strict controller

bench-pool: setup
	bash hack/bench-pool.sh $(ARGS)

bench-disk: setup
	$(PY) hack/bench_disk.py $(ARGS)

bench-create: setup image
	bash hack/bench.sh $(ARGS)

bench-watch: setup image
	bash hack/bench-watch.sh $(ARGS)

bench-fleet: setup image
	bash hack/bench-fleet.sh $(ARGS)

bench: setup image
	bash hack/bench-all.sh $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
