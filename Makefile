# The two commands of the README:
#   make test   set up a virtualenv, install tismet with its test extras, run the tests
#   make demo   set up a virtualenv, configure and run carbon-cache + graphite-web on Tismet
#               with a collector of this machine's figures, until Ctrl-C
# Other targets:
#   make demo-cluster  the same as a cluster: carbon-relay, two caches, two graphite-webs
#   make dev        build the extensions in place (PYTHONPATH=. python -c 'import tismet')
#   make bench      run the engine benchmark side by side with whisper
#   make sanitize   run the engine tests under AddressSanitizer and UBSan
#   make fuzz       libFuzzer on the decoders, FUZZ_SECONDS per target (needs clang: tools/sysdeps.sh --with-fuzz)

PYTHON ?= python3.11
VENV ?= .venv
VPY = $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test dev bench sanitize fuzz clean venv demo demo-cluster demo-venv sysdeps

$(VPY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

venv: $(VPY)
	@tools/sysdeps.sh --with-browser
	$(VPY) -m pip install -q ".[test]"

sysdeps:
	@tools/sysdeps.sh

test: venv
	cd tests && ../$(VPY) -m pytest -p no:cacheprovider $(PYTEST_ARGS) .

dev:
	$(or $(shell command -v $(PYTHON)),python3) setup.py -q build_ext --inplace

bench: venv
	$(VPY) bench/engine.py

sanitize:
	$(PYTHON) -m pip install -q tox
	$(PYTHON) -m tox -e sanitize

FUZZ_SECONDS ?= 60
fuzz:
	@tools/sysdeps.sh --with-fuzz
	$(or $(shell command -v $(PYTHON)),python3) tools/fuzz.py run --seconds $(FUZZ_SECONDS)

demo-venv: $(VPY) sysdeps
	$(VPY) -m pip install -q ".[demo]"

demo: demo-venv
	$(VPY) demo/run.py --root demo-run $(DEMO_ARGS)

demo-cluster: demo-venv
	$(VPY) demo/run.py --root demo-cluster --cluster $(DEMO_ARGS)

clean:
	rm -rf build dist *.egg-info $(VENV) .tox tismet/*.so demo-run demo-cluster
