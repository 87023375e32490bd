# The README quickstart: `make demo` (set up the deploy runtime, then run the main job) and
# `make test` (set up both environments, then run the test suite: all of it in .venv, the
# deploy tests again in .venv-deploy, where torch is not installed).
VENV ?= .venv
DEPLOY_VENV ?= .venv-deploy
STAMP := $(VENV)/.setup-done
DEPLOY_STAMP := $(DEPLOY_VENV)/.setup-done

.PHONY: setup deploy-env demo test test-full test-deploy bench clean
setup: $(STAMP)
deploy-env: $(DEPLOY_STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

$(DEPLOY_STAMP): pyproject.toml scripts/setup_deploy.sh
	VENV=$(DEPLOY_VENV) bash scripts/setup_deploy.sh
	touch $(DEPLOY_STAMP)

demo: deploy-env
	$(DEPLOY_VENV)/bin/poi predict examples/astronaut.jpg --show-au

test: test-full test-deploy

# two pytest-xdist workers (the 2-core CI machine: 3-3.5 min, against 6-7 in one process);
# PYTEST_WORKERS=0 runs the suite in one process
PYTEST_WORKERS ?= 2
test-full: setup
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# the deploy tests (the files marked `deploy`; the others import torch or pandas) in the base
# install: one of them fails if torch is imported
DEPLOY_TESTS = $(shell grep -l "pytest.mark.deploy" tests/test_*.py)
test-deploy: deploy-env
	@$(DEPLOY_VENV)/bin/python -c "import pytest" 2>/dev/null || $(DEPLOY_VENV)/bin/python -m pip install --quiet "pytest>=8"
	$(DEPLOY_VENV)/bin/python -m pytest -q -m deploy -p no:cacheprovider $(DEPLOY_TESTS) $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) build *.egg-info
