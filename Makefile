# The two commands a user needs: `make mesh` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CT     ?= sample_ct
CONFIG ?= configs/default.toml
OUT    ?= out

.PHONY: mesh test bench view-time evaluate goldens sample clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

mesh: venv
	$(PY) -m pipeline mesh $(CT) --config $(CONFIG) --out $(OUT)

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pipeline.bench

# Seconds until report.html's 3D view is drawn in a fresh headless Chromium (median of 5; needs chromium).
view-time: venv
	$(PY) -m tests.browser $(OUT)/report.html

# Labels against references: the phantom's truth, and the real CTs in ../shared when present.
# Overlays of the labels go to $(OUT)/evaluate/*.png.
evaluate: venv
	$(PY) -m pipeline.evaluate --png $(OUT)/evaluate

# Rewrites tests/golden/sample_ct.json from the current code; review the diff before committing.
goldens: venv
	$(PY) -m tests.regenerate_goldens

# Rewrites sample_ct/ from the phantom generator (deterministic seed).
sample: venv
	rm -rf sample_ct && $(PY) -m pipeline phantom sample_ct --preset sample

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
