# The two entry points of the README. Both create the virtual environment on first
# use (VENV, default .venv) and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
# the test files run in parallel, one worker per core; a file's tests share one worker
# (module fixtures such as the SLURM cluster). PYTEST_ARGS= runs them one by one.
PYTEST_ARGS ?= -n auto --dist loadfile
BIN := $(VENV)/bin

.PHONY: study test clean-results

study: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" snakemake --cores $(CORES)
	@echo "results: results/table.md (= results/synthetic/table.md)"

test: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest $(PYTEST_ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

clean-results:
	rm -rf results/*/ results/table.md results/table.csv logs benchmarks/*/ .snakemake
