# The two commands of the README. Each makes .venv by itself the first time.
#   make demo   render a small batch of the sample workflow (tiny checkpoint made on the spot)
#   make test   run the test suite (what CI runs)
VENV  ?= .venv
PY    := $(VENV)/bin/python
# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build on a
# CPU box; on a GPU machine use the torch it has: make TORCH="torch" ...
TORCH ?= torch==2.13.0

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/farm demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q --durations=25  # the slowest tests listed: CI must stay well under 20 minutes

clean:
	rm -rf $(VENV) .farm
