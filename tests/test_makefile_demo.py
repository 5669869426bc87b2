"""`make demo`'s overrides are a valid config: counting prompts, Flow-GRPO without completions, and
only the last iteration audited (completed, so TP-GRPO's annotations can be shown on it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tpgrpo.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _make_vars() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return {m[1]: m[2].strip() for m in re.finditer(r"^(DEMO_\w+)\s*\?=\s*(.*)$", text, re.M)}


def test_demo_overrides_validate_and_audit_the_last_iteration() -> None:
    v = _make_vars()
    iterations = int(v["DEMO_ITERATIONS"])
    words = shlex.split(v["DEMO_SET"].replace("$(DEMO_ITERATIONS)", str(iterations)))
    sets = [w for w in words if w != "--set"]
    assert len(sets) * 2 == len(words)  # every override is a --set
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    assert (cfg.reward.mode, cfg.branch.completions, cfg.rollout.tasks) == ("flow_grpo", False, ["counting"])
    assert [i for i in range(iterations) if cfg.branch.completes(i)] == [iterations - 1]
    demo = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "--mode tp_constrained" in demo and demo.index("annotate") < demo.index("evaluate")
