"""``meshlib demo``: a small bookinfo-style mesh on 127.0.0.1, driven through Istio scenarios.

Internal: the CLI (``meshlib._cli.demo``) is the public face. ``run_demo`` is importable for tests.
"""

from __future__ import annotations

from meshlib._demo.runner import DemoOptions, DemoResult, run_demo
from meshlib._demo.scenarios import SCENARIOS, ScenarioResult

__all__ = ["SCENARIOS", "DemoOptions", "DemoResult", "ScenarioResult", "run_demo"]
