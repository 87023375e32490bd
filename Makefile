# The README quickstart: `make demo` (set up, then run the main job) and `make test`
# (set up, then run the test suite). Both set up .venv on first use.
VENV ?= .venv
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/poi predict examples/astronaut.jpg --show-au

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
