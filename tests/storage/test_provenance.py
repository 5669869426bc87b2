"""Config hashes and code version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tpgrpo
from tpgrpo.storage.provenance import canonical_json, code_version, config_hash


def test_config_hash_is_canonical() -> None:
    a = {"model": {"lr": 3e-4, "rank": 32}, "name": "é"}
    b = {"name": "é", "model": {"rank": 32, "lr": 3e-4}}
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(a))
    assert config_hash(a) != config_hash({**a, "name": "e"})
    assert canonical_json(b) == '{"model":{"lr":0.0003,"rank":32},"name":"é"}'


def test_config_hash_refuses_non_json() -> None:
    with pytest.raises(ValueError):
        config_hash({"x": float("nan")})
    with pytest.raises(TypeError):
        config_hash({"x": object()})


def test_code_version_starts_with_package_version() -> None:
    version = code_version()
    assert re.fullmatch(re.escape(tpgrpo.__version__) + r"(\+g[0-9a-f]{12}(\.dirty)?)?", version)


def test_code_version_of_an_image_build_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a checkout (an installed image has no .git), the commit comes from BUILD_COMMIT."""
    from tpgrpo.storage import provenance

    package = tmp_path / "tpgrpo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(tpgrpo, "__file__", str(package / "__init__.py"))  # no git repository here
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == tpgrpo.__version__
        (package / "BUILD_COMMIT").write_text("1a2b3c4d5e6f\n")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == f"{tpgrpo.__version__}+g1a2b3c4d5e6f"
        (package / "BUILD_COMMIT").write_text("not a commit; rm -rf /\n")
        provenance.code_version.cache_clear()
        assert provenance.code_version() == tpgrpo.__version__
    finally:
        provenance.code_version.cache_clear()
