# Two commands on a fresh machine: `make demo` and `make test`. Both run `setup` first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST := $(PY) -m pytest
export PYTHONUNBUFFERED := 1
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test test-fast bench lint clean

# Debian's prometheus for the real-scrape tests, ffmpeg for reading .stem.mp4, and fluidsynth with
# a GM soundfont and ten GM songs for `make-dataset --source midi` (each test skips, saying why,
# where apt is not ours).
setup: $(STAMP)
	-@infra/local/install-prometheus.sh
	-@infra/local/install-tool.sh ffprobe ffmpeg
	-@infra/local/install-tool.sh fluidsynth fluidsynth
	-@infra/local/install-tool.sh /usr/share/sounds/sf2/FluidR3_GM.sf2 fluid-soundfont-gm
	-@infra/local/install-tool.sh /usr/share/planetblupi/music/music000.mid planetblupi-music-midi

# One resolver pass for the whole stack keeps s3fs/aiobotocore/botocore consistent.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --progress-bar off -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m auralflow_dist demo --workdir demo_output

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf demo_output .pytest_cache
