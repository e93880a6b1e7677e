"""spark/aggregate.py imported as a module (spark/ is not a package), once per process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

JOB = Path(__file__).resolve().parents[2] / "spark" / "aggregate.py"


def load_job() -> ModuleType:
    """The Spark job's module: its builders and helpers, for tests on a local session."""
    if "gold_job" in sys.modules:
        return sys.modules["gold_job"]
    spec = importlib.util.spec_from_file_location("gold_job", JOB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
