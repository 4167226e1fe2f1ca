# The two quickstart commands: `make run` and `make test`. Both install what
# they need first (scripts/bootstrap.sh is idempotent).
.PHONY: run test test-long lint bootstrap bench

VENV := .venv/bin
# mypy keeps its cache with the machine's other caches (CFN_CACHE_DIR, ~/.cache/cfn by
# default), so a fresh clone checks only what differs: ~2 s instead of ~23 s of CPU.
MYPY := $(VENV)/mypy --strict --cache-dir "$${CFN_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/cfn}/mypy"

bootstrap:
	@scripts/bootstrap.sh

# The main job: a real CFN Loop on a sample epic, in a scratch workspace under
# .cfn/workspaces/, on cfn's own Redis and SQLite, watched live on the portal's
# dashboard (its address is printed first). With no LLM key configured the agents
# use the clearly labelled offline provider.
EPIC ?= Build a small Python module fizzbuzz.py with a function fizzbuzz(n) and a test for it
MODE ?= mvp

# The portal (dashboard, REST API, live events) runs detached beside the loop and is
# reused by later runs; `cfn portal stop` stops it.
run: bootstrap
	$(VENV)/cfn portal --detach
	$(VENV)/cfn run --mode $(MODE) --epic "$(EPIC)"

lint: bootstrap
	$(VENV)/ruff check src tests bench
	$(MYPY) src/

# Most of the suite waits on real processes and servers, so pytest runs on more xdist
# workers than this 2-core machine has cores; --dist loadgroup keeps the tests of one
# expensive fixture on one worker (tests/conftest.py). mypy checks src/ beside pytest
# instead of before it; `make test` fails when either fails.
XDIST ?= -n 4 --dist loadgroup

test: bootstrap
	$(VENV)/ruff check src tests bench
	@out=$$(mktemp); $(MYPY) src/ >$$out 2>&1 & mypy=$$!; \
	$(VENV)/pytest -q $(XDIST); status=$$?; \
	wait $$mypy || status=1; echo "mypy --strict src/:"; cat $$out; rm -f $$out; exit $$status

test-long: bootstrap
	$(VENV)/pytest -q -m long

bench: bootstrap
	$(VENV)/python -m bench
