# The two commands a new user needs: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CVM    := $(VENV)/bin/cvm
DEMO_CUSTOMERS ?= 5000

.PHONY: demo demo-loop test test-fast lab install install-test demo-data clean help bench bench-peers

help:
	@echo "make demo   - set up, generate the demo retailer, run the whole playbook headless, print the reports"
	@echo "make test   - set up with test extras and run the whole test suite"
	@echo "make lab    - open JupyterLab on the project's kernel (demo data generated first)"
	@echo "make demo-loop - after the demo: launch its plan with the demo's true responses, then run week two"
	@echo "make bench  - wall time and peak memory per playbook step at 100k/1M/5M customers (bench/results.json)"
	@echo "make bench-peers - cvm's CLV and RFM against lifetimes and pymc-marketing (bench/peers_results.json)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

data/demo/truth/truth.json: $(VENV)/.installed lib/cvm/demo.py
	$(CVM) demo --customers $(DEMO_CUSTOMERS) --out data/demo --seed 42

demo-data: data/demo/truth/truth.json

demo: demo-data
	$(CVM) run --config configs/demo.yaml

demo-loop: demo
	$(CVM) demo-launch --plan output/demo/latest/personalisation/contacts_plan.parquet \
	    --history data/demo/contacts.parquet --out output/demo_launched_contacts.parquet
	$(CVM) run --config configs/demo_week2.yaml

test: install-test demo-data
	$(PY) -m pytest -n 2 --dist loadfile -q tests
	$(PY) -m pytest -q --nbval-lax -p no:cacheprovider notebooks

test-fast: install-test
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not real and not notebook" tests

lab: demo-data
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: install
	$(CVM) bench $(if $(SIZES),--customers $(SIZES))

# The peer libraries live in their own benchmark-only environment (pymc-marketing 1.x needs Python >= 3.12)
PEERS_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
PEERS_VENV   := .venv-peers

$(PEERS_VENV)/.installed: bench/peers-requirements.txt
	$(PEERS_PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers-requirements.txt
	touch $@

bench-peers: install $(PEERS_VENV)/.installed
	$(PY) bench/bench_peers.py --peers-python $(PEERS_VENV)/bin/python $(if $(SIZES),--sizes $(SIZES))

clean:
	rm -rf output data/demo
