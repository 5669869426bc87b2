"""Every import points down: cli → {report, flows} → pipeline → stages → {rewards, models, world}
→ storage → schemas → {config, algorithm}. Function-level imports count too (a lazy import is
still an arrow)."""

from __future__ import annotations

import re
from pathlib import Path

import tpgrpo

LAYER = {
    "cli": 7,
    "report": 6,
    "flows": 6,
    "pipeline": 5,
    "stages": 4,
    "rewards": 3,
    "models": 3,
    "world": 3,
    "storage": 2,
    "schemas": 1,
    "config": 0,
    "algorithm": 0,
}
# arrows within one layer that are part of the design (no cycle: world's pretraining uses the
# models; the shapes reward knows the synthetic world; a reward model picks its device)
SIDEWAYS = {("world", "models"), ("rewards", "world"), ("rewards", "models"), ("algorithm", "config")}
IMPORT = re.compile(r"^\s*(?:from|import) tpgrpo\.(\w+)", re.M)


def test_no_import_points_up_or_sideways() -> None:
    package = Path(tpgrpo.__file__).parent
    wrong = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        source = rel.parts[0].removesuffix(".py")
        if source not in LAYER:
            continue
        for target in IMPORT.findall(path.read_text()):
            if target not in LAYER or target == source or (source, target) in SIDEWAYS:
                continue
            if LAYER[target] >= LAYER[source]:
                wrong.append(f"{rel}: imports tpgrpo.{target}")
    assert not wrong, "\n".join(wrong)


PREFECT = re.compile(r"^\s*(?:from|import) prefect(?:_\w+)?\b", re.M)


def test_prefect_stays_in_flows_and_cli() -> None:
    """Prefect is wiring: the pipeline and everything below it run without it (`tpgrpo stage`,
    benchmarks); what the Prefect UI shows is built in `flows/` (`flows.artifacts`, `flows.names`)."""
    package = Path(tpgrpo.__file__).parent
    wrong = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).parts[0] not in ("flows", "cli") and PREFECT.search(path.read_text())
    ]
    assert not wrong, "import prefect outside flows/ and cli/: " + ", ".join(wrong)
