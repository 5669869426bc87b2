"""The reward registry: names, parameters, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tpgrpo.errors import UserError
from tpgrpo.rewards import REWARDS, Reward, lazy, make_reward


def test_make_shapes_by_name_and_mapping() -> None:
    for spec in ("shapes", {"name": "shapes"}):
        r = make_reward(spec)
        assert isinstance(r, Reward)
        assert r.key == "shapes" and r.version == "1"
    assert "shapes" in REWARDS


def test_errors_list_the_choices() -> None:
    with pytest.raises(UserError, match=r"unknown reward 'pickscor'; registered rewards: \['shapes'"):
        make_reward("pickscor")
    with pytest.raises(UserError, match="needs a string 'name'"):
        make_reward({"threshold": 1})
    with pytest.raises(UserError, match="is a name or a mapping"):
        make_reward(3)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"reward 'shapes': bad parameters \['threshold'\].*no parameters"):
        make_reward({"name": "shapes", "threshold": 0.5})


def test_lazy_factory_passes_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, object]] = []

    def fake(scale: float = 1.0) -> Reward:
        made.append({"scale": scale})
        return make_reward("shapes")

    monkeypatch.setattr(sys.modules[__name__], "fake_factory", fake, raising=False)
    monkeypatch.setitem(REWARDS, "fake", lazy(f"{__name__}:fake_factory"))
    make_reward({"name": "fake", "scale": 2.0})
    assert made == [{"scale": 2.0}]
    with pytest.raises(UserError, match=r"it takes \['scale'\]"):
        make_reward({"name": "fake", "scael": 2.0})


def test_importing_the_registry_is_light() -> None:
    code = "import sys, tpgrpo.rewards; print('tpgrpo.rewards.shapes' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
