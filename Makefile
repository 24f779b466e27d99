# The README's two set-up commands. Each creates the venv and installs what it needs from scratch, with the versions
# pinned in constraints.txt (those that passed the tests), so a fresh machine gets a known-good environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out
# `make install CONSTRAINTS=` installs the newest versions pyproject.toml allows instead
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast lint install constraints clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/activate
	$(BIN)/python -m pip install -q --retries 10 --resume-retries 20 $(PIP_CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The fast tier: every test not marked slow (a couple of minutes); `make test` runs them all.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	bash experiments/demo.sh $(DEMO_DIR)

# Refresh constraints.txt: a throw-away venv gets the newest versions pyproject.toml allows (no constraints), and
# its pip freeze (without btsbot-jax itself) becomes the new file. Then run `make clean test` and commit both.
CONSTRAINTS_VENV := .venv-constraints
constraints:
	rm -rf $(CONSTRAINTS_VENV)
	$(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/python -m pip install -q --upgrade pip
	$(CONSTRAINTS_VENV)/bin/python -m pip install -q -e '.[test]'
	{ sed -n '/^#/p' constraints.txt; \
	  $(CONSTRAINTS_VENV)/bin/python -m pip freeze --exclude-editable --exclude btsbot-jax; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(CONSTRAINTS_VENV)
	@echo "constraints.txt refreshed; now run: make clean test"

clean:
	rm -rf $(VENV) $(DEMO_DIR)
