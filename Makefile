# The two quickstart commands: `make run` and `make test`. Both install what
# they need first (scripts/bootstrap.sh is idempotent).
.PHONY: run test test-long lint bootstrap bench

VENV := .venv/bin

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
	$(VENV)/mypy --strict src/

test: lint
	$(VENV)/pytest -q

test-long: bootstrap
	$(VENV)/pytest -q -m long

bench: bootstrap
	$(VENV)/python -m bench
