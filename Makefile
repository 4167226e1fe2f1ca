# The two quickstart commands: `make run` and `make test`. Both install what
# they need first (scripts/bootstrap.sh is idempotent).
.PHONY: run test test-long lint bootstrap bench

VENV := .venv/bin

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	$(VENV)/cfn demo

lint: bootstrap
	$(VENV)/ruff check src tests bench
	$(VENV)/mypy --strict src/

test: lint
	$(VENV)/pytest -q

test-long: bootstrap
	$(VENV)/pytest -q -m long

bench: bootstrap
	$(VENV)/python -m bench
