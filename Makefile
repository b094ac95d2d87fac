# The two commands a user needs: `make mesh` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CT     ?= sample_ct
CONFIG ?= configs/default.toml
OUT    ?= out

.PHONY: mesh test test-oldest bench bench-peer view-time bench-batch batch evaluate goldens sample shape-model clean venv

venv: $(VENV)/.installed

# The package's bytecode is compiled at install, as pip does for a wheel: where
# Python may not write it (PYTHONDONTWRITEBYTECODE, a read-only checkout), every
# run would compile the package again (0.12 s of a mesh run).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m compileall -q pipeline
	touch $@

mesh: venv
	$(PY) -m pipeline mesh $(CT) --config $(CONFIG) --out $(OUT)

# Test files are shared among up to TEST_WORKERS processes (a file's tests stay together:
# their module fixtures are made once).
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The suite against the lowest release of every dependency pyproject.toml allows
# (each ">=" taken as "=="), in its own environment under build/: the bounds stay true.
OLDEST := build/oldest-venv
test-oldest:
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print(*[r.split(';')[0].replace('>=', '==') for r in p['dependencies'] + p['optional-dependencies']['test'] \
	if '>=' in r], sep='\n')" > build/oldest-constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet -c build/oldest-constraints.txt -e '.[test]'
	$(OLDEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -p no:cacheprovider

bench: venv
	$(PY) -m pipeline.bench

# The whole mesh job against dicom2stl on Pelvic-Ref-003 (../shared/real_ct), PAIRS alternating runs;
# dicom2stl goes into its own environment under build/ on first use.
PAIRS ?= 3
bench-peer: venv
	$(PY) -m pipeline.bench_peer --pairs $(PAIRS)

# Every case of a manifest (CSV or TOML) into $(OUT)/<case_id>/ on a local cluster; see README "Many CTs".
batch: venv
	@test -n "$(MANIFEST)" || { echo "usage: make batch MANIFEST=cases.csv OUT=out_dir"; exit 2; }
	$(PY) -m pipeline batch $(MANIFEST) --out $(OUT)

# The same 8 phantom cases with 1, 2, 4, ... workers (up to the cores): wall time and speed-up.
bench-batch: venv
	$(PY) -m pipeline.batch.bench

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

# Rebuilds pipeline/segment/data/pelvis_shape_model.npz from the JHU pelvis atlas
# (ATLAS, default ../shared/atlas/jhu_pelvis) and prints its leave-one-out error.
ATLAS ?= ../shared/atlas/jhu_pelvis
shape-model: venv
	$(PY) -m pipeline.segment.build_shape_model $(ATLAS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
