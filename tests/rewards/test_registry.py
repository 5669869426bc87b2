"""The reward registry: names, parameters, lazy imports."""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

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


# the spec of every registered reward with its required parameters (paths need not exist: no build)
REQUIRED = {
    "pickscore": {"model_path": "/models/PickScore_v1", "device": "cuda"},
    "clipscore": {"model_path": "/models/clip"},
    "http": {"url": "http://reward-server:8000"},
    "weighted": {"components": [{"spec": "shapes", "weight": 1.0}]},
}


def _unbuildable(factory: Any) -> Any:
    """`factory`'s signature (its lazy target), but failing the test when called."""

    def refuse(**params: Any) -> Reward:
        pytest.fail("the reward was built")

    refuse.lazy_target = factory.lazy_target  # type: ignore[attr-defined]
    return refuse


@pytest.mark.parametrize("name", list(REWARDS))
def test_spec_key_is_the_key_without_building(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default key = registered name, a `key` parameter wins; the factory is never called."""
    from tpgrpo.rewards import check_spec, resolve, spec_key

    spec = {"name": name, **REQUIRED.get(name, {})}
    monkeypatch.setitem(REWARDS, name, _unbuildable(REWARDS[name]))
    assert check_spec(spec) == (name, REQUIRED.get(name, {}))
    assert spec_key(spec) == name
    if "key" in inspect.signature(resolve(REWARDS[name])).parameters:
        assert spec_key({**spec, "key": "mine_v2"}) == "mine_v2"


@pytest.mark.parametrize("name", ["shapes", "jpeg", "jpeg_incompressibility", {"name": "jpeg", "key": "q"}])
def test_spec_key_matches_the_built_reward(name: str | dict) -> None:
    from tpgrpo.rewards import spec_key

    assert make_reward(name).key == spec_key(name)


def test_spec_key_refuses_what_make_reward_refuses() -> None:
    from tpgrpo.rewards import spec_key

    with pytest.raises(UserError, match=r"unknown reward 'nosuch'; registered rewards"):
        spec_key("nosuch")
    with pytest.raises(UserError, match=r"reward 'pickscore': bad parameters \[\].*'model_path'"):
        spec_key("pickscore")
    with pytest.raises(UserError, match=r"reward 'jpeg': key must be a non-empty string, got 5"):
        spec_key({"name": "jpeg", "key": 5})
