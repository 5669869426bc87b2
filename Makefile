# Quick start: `make demo` (install + a short training on the embedded tiny model, then the paired
# held-out gain over the base) and `make test` (install with test extras + lint, types and tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned and installed first: a CPU wheel lies on the build machines, any other spec
# pulls a multi-GB CUDA build. The same pin goes with every later install so it stays.
TORCH  := torch==2.13.0
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export TOKENIZERS_PARALLELISM := false

DEMO_RUN ?= demo
# The demo trains Flow-GRPO advantages without completions (TP-GRPO's step-level modes need ODE
# completions, ~3x the cost of an iteration) on the counting prompts, with tiny.yaml's update
# recipe, for 32 iterations, then evaluates the base and the last checkpoint on the 18 held-out
# counting prompts x 48 noises. bench/demo.py measured it: +0.038, +0.032, +0.068 mean score over
# seeds 0-2, each 95 % CI excluding zero; every-task demos of 24 iterations did not (bench/README.md).
# Its last iteration is audited (branch.audit_every): completed like a TP-GRPO iteration (~25 s more),
# so TP-GRPO's turning points on the same run are shown; the training is unchanged by it.
DEMO_ITERATIONS ?= 32
DEMO_SET        ?= --set reward.mode=flow_grpo --set branch.completions=false --set 'rollout.tasks=[counting]' \
                   --set branch.audit_every=$(DEMO_ITERATIONS)
DEMO_REPLICATES ?= 48

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) "$(TORCH)"
	$(PIP) -e . "$(TORCH)"
	@touch $@

# boto3 (for moto) is pinned to the botocore that s3fs's aiobotocore allows, already installed:
# unpinned, pip walks back through hundreds of boto3 releases (30+ minutes) to find it.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e ".[test]" "$(TORCH)" "boto3==$$($(BIN)/python -c 'import botocore; print(botocore.__version__)')"
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/tpgrpo train configs/tiny.yaml --run-id $(DEMO_RUN) --iterations $(DEMO_ITERATIONS) $(DEMO_SET)
	$(BIN)/tpgrpo annotate --run $(DEMO_RUN) --reward shapes --mode tp --mode tp_constrained
	$(BIN)/tpgrpo audit turning-points --run $(DEMO_RUN) --reward shapes --mode tp_constrained
	$(BIN)/tpgrpo evaluate --run $(DEMO_RUN) --checkpoint latest --baseline 0 --replicates $(DEMO_REPLICATES)
	$(BIN)/tpgrpo report --run $(DEMO_RUN) --out runs/$(DEMO_RUN)/report
	@echo ""
	@echo "results: runs/$(DEMO_RUN)/  (Parquet datasets per iteration, checkpoints/, run.json)"
	@echo "report:  runs/$(DEMO_RUN)/report/index.html"

lint: $(VENV)/.installed-test
	$(BIN)/python -m pip check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .prefect .pytest_cache .mypy_cache .ruff_cache
