# Quick start targets: each one installs what it needs first (uv, then the locked environment).
UV_VERSION := 0.13.8
export PATH := $(HOME)/.local/bin:$(PATH)

.PHONY: setup jars run demo ingest test lint bench

setup:
	@command -v uv >/dev/null 2>&1 && uv --version | grep -q "$(UV_VERSION)" \
		|| python3 -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	uv sync --frozen --all-extras
	@$(MAKE) --no-print-directory jars

# S3A jars for spark-submit (hadoop-aws + AWS SDK v2 modules), cached outside git; needs Maven.
jars:
	@bash scripts/fetch-spark-jars.sh

run: setup
	uv run energy-pipeline run

demo: setup
	uv run energy-pipeline demo

test: setup
	uv run pytest

lint: setup
	uv run ruff check flows emulator tests bench spark deployments
	uv run ruff format --check flows emulator tests bench spark deployments
	uv run mypy flows

bench: setup
	uv run python bench/ingest_bench.py
