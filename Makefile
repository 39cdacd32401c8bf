# Every target does its own set-up on a fresh machine: system packages, a venv in .venv, the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.PHONY: demo test lint sysdeps browserdeps venv clean

sysdeps:
	@command -v espeak-ng >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1 \
	  && ldconfig -p | grep -q libespeak-ng || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq espeak-ng libespeak-ng1 ffmpeg; }

# Only `make test` needs a browser: Debian's chromium and its matching driver (tests/test_serve_browser.py runs the
# live page in it; nothing downloads a browser at run time).
browserdeps:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

$(BIN)/lpm: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,ingest,scale]' && $(BIN)/pip install -q --no-deps mediapipe==0.10.21 resemblyzer==0.1.4 silero-vad==6.2.3
	@touch $(BIN)/lpm

venv: sysdeps $(BIN)/lpm

demo: venv
	$(BIN)/lpm demo --out out/demo.mp4

test: venv browserdeps
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf out .pytest_cache
