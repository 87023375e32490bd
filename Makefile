# The README quickstart: `make demo` (set up the deploy runtime, then run the main job) and
# `make test` (set up both environments, then run the test suite: all of it in .venv, the
# deploy tests again in .venv-deploy, where torch is not installed).
VENV ?= .venv
DEPLOY_VENV ?= .venv-deploy
STAMP := $(VENV)/.setup-done
DEPLOY_STAMP := $(DEPLOY_VENV)/.setup-done

.PHONY: setup deploy-env demo test test-full test-deploy test-deploy-oldest bench clean
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

test: test-full test-deploy test-deploy-oldest

# two pytest-xdist workers (the 2-core CI machine: 4:47 for 1289 tests in the CI dry run of 2026-12-05 at 054c5a9,
# nearly nothing else running; 7:44 for 1088 with a niced helper beside it; about twice that in one process);
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

# the deploy tests once more on the oldest Python pyproject.toml allows (3.10), where the machine
# has one (on PATH, or pyenv's): a 3.11+ API in the deploy runtime fails here
OLDEST_PYTHON ?= $(shell for p in $$(command -v python3.10) $(HOME)/.pyenv/versions/3.10*/bin/python3.10; do \
	"$$p" -c "import sys; assert sys.version_info[:2] == (3, 10)" 2>/dev/null && echo "$$p" && break; done)
OLDEST_DEPLOY_VENV ?= .venv-deploy-py310
test-deploy-oldest:
	@if [ -z "$(OLDEST_PYTHON)" ]; then echo "no Python 3.10 here: the deploy tests on the oldest supported Python are skipped"; \
	else VENV=$(OLDEST_DEPLOY_VENV) PYTHON=$(OLDEST_PYTHON) WITH_PYTEST=1 bash scripts/setup_deploy.sh && \
	  $(OLDEST_DEPLOY_VENV)/bin/python -m pytest -q -m deploy -p no:cacheprovider $(DEPLOY_TESTS) $(PYTEST_ARGS); fi

bench: setup
	$(VENV)/bin/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) $(OLDEST_DEPLOY_VENV) build *.egg-info
