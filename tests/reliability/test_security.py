"""Security: nothing is unpickled, names never escape their directory, the reward server is closed.

- a source scan (AST, not grep, so docstrings that say "never torch.load" do not count): the
  package never calls `torch.load`, `pickle`/`dill`/`cloudpickle`/`joblib`/`marshal` loaders,
  `yaml.load`, `np.load(allow_pickle=True)`, `eval`/`exec`, and every `from_pretrained` of weights
  passes `use_safetensors=True`; the one exception is allow-listed with its reason;
- behaviour: a pickle planted as model weights, as a checkpoint's adapter or optimizer state, as
  a reward server's answer or as a request to the server is refused, and its payload never runs;
- run ids, reward keys, modes and checkpoint names: whatever is accepted stays inside the root;
- the reward server binds to loopback by default and refuses oversized requests unread.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tpgrpo
from tpgrpo.errors import DataError, RewardError, UserError
from tpgrpo.storage import RunLayout, join_uri, validate_checkpoint, validate_key, validate_run_id

PACKAGE = Path(tpgrpo.__file__).parent

BANNED_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "_pickle"}
BANNED_CALLS = {
    ("torch", "load"),
    ("torch", "save"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("yaml", "full_load_all"),
    ("yaml", "load_all"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
}
PICKLING_COLLECTIVES = {"broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list"}
WEIGHTLESS = {"AutoProcessor", "AutoTokenizer", "CLIPTokenizer", "CLIPProcessor", "T5TokenizerFast"}

# (file, call): why it is acceptable
ALLOWED = {
    ("stages/update.py", "broadcast_object_list"): (
        "rank 0's update plan to the torchrun ranks it launched on this machine (gloo on loopback); "
        "no data from storage or the network beyond the job's own processes"
    ),
}


def _calls(tree: ast.AST) -> list[tuple[str, str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                base = func.value
                name = (
                    base.id
                    if isinstance(base, ast.Name)
                    else base.attr
                    if isinstance(base, ast.Attribute)
                    else ""
                )
                out.append((name, func.attr, node))
            elif isinstance(func, ast.Name):
                out.append(("<builtin>", func.id, node))
    return out


def _keyword(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_source_never_unpickles() -> None:
    problems = []
    used_allowances = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            problems += [f"{rel}:{node.lineno}: imports {n}" for n in names if n in BANNED_MODULES]
        for base, attr, call in _calls(tree):
            where = f"{rel}:{call.lineno}"
            if (base, attr) in BANNED_CALLS:
                problems.append(f"{where}: {base}.{attr}(...)")
            if (
                base in ("np", "numpy")
                and attr == "load"
                and _keyword(call, "allow_pickle") not in (None, False)
            ):
                problems.append(f"{where}: np.load(allow_pickle=...)")
            if base == "<builtin>" and attr in ("eval", "exec", "__import__"):
                problems.append(f"{where}: {attr}(...)")
            if attr in PICKLING_COLLECTIVES:
                if (rel, attr) in ALLOWED:
                    used_allowances.add((rel, attr))
                else:
                    problems.append(f"{where}: torch.distributed.{attr} pickles")
            if (
                attr == "from_pretrained"
                and base not in WEIGHTLESS
                and _keyword(call, "use_safetensors") is not True
            ):
                problems.append(f"{where}: {base}.from_pretrained without use_safetensors=True")
    assert not problems, "\n".join(problems)
    assert used_allowances == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used_allowances}"


class _Payload:
    """Unpickling this creates `marker`: proof that something ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _evil(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def test_pickle_weights_never_load(flow_pipeline: Path, tmp_path: Path, marker: Path) -> None:
    """Pickle beside safetensors: only the safetensors load. Pickle alone: refused before loading."""
    from tpgrpo.models.pipeline import load_pipeline

    model = tmp_path / "model"
    shutil.copytree(flow_pipeline, model)
    (model / "transformer" / "diffusion_pytorch_model.bin").write_bytes(_evil(marker))
    load_pipeline(str(model), "sd3")
    for f in (model / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(UserError, match="pickle weights only"):
        load_pipeline(str(model), "sd3")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["adapter.safetensors", "ema.safetensors", "optimizer.safetensors"])
def test_pickled_checkpoint_file_is_refused(
    reference_run: RunLayout, tmp_path: Path, marker: Path, name: str
) -> None:
    """An attacker with write access replaces a checkpoint file by a pickle and fixes the manifest's
    checksum: loading refuses it (safetensors only), and the payload never runs."""
    from tpgrpo.pipeline.context import load_run
    from tpgrpo.stages.checkpoints import load_checkpoint

    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    ctx = load_run(reference_run.run_id, str(root))
    ckpt = Path(ctx.layout.checkpoint(1))
    blob = _evil(marker)
    (ckpt / name).write_bytes(blob)
    manifest = json.loads((ckpt / "_CHECKPOINT.json").read_text())
    manifest["files"][name] = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (ckpt / "_CHECKPOINT.json").write_text(json.dumps(manifest))
    with pytest.raises((UserError, DataError), match=r"not a (readable|tpgrpo)"):
        load_checkpoint(str(ckpt), ctx.cfg, ctx.policy())
    assert not marker.exists()


def test_reward_client_never_unpickles_an_answer(marker: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from tpgrpo.rewards.http import HttpReward

    body = _evil(marker)

    class Pickler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            self._send(json.dumps({"status": "ok", "key": "k", "version": "1"}).encode())

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(body)

        def _send(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pickler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = HttpReward(f"http://127.0.0.1:{server.server_address[1]}", retries=0)
        with pytest.raises(RewardError, match="malformed JSON"):
            client.score(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a red circle"])
    finally:
        server.shutdown()
        server.server_close()
    assert not marker.exists()


def test_reward_server_never_unpickles_a_request(marker: Path) -> None:
    import requests

    from tpgrpo.rewards.server import serve

    server = serve("shapes")
    try:
        answer = requests.post(server.url + "/score", data=_evil(marker), timeout=10)
        assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    finally:
        server.shutdown()
    assert not marker.exists()


# --- names that become paths ------------------------------------------------------------------------

names = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["..", ".", "../x", "a/../../b", "/etc", "~", "a\\..\\b", "a\x00b", "iter=0001", "x" * 129, " a", "a b"]
)


def _inside(root: Path, uri: str) -> bool:
    return os.path.realpath(uri).startswith(os.path.realpath(root) + os.sep)


@settings(max_examples=300, deadline=None)
@given(run_id=names, key=names, mode=names, checkpoint=names)
def test_accepted_names_stay_inside_the_root(run_id: str, key: str, mode: str, checkpoint: str) -> None:
    root = Path("/srv/runs")
    for validate, value in [
        (validate_run_id, run_id),
        (validate_key, key),
        (validate_key, mode),
        (validate_checkpoint, checkpoint),
    ]:
        try:
            validate(value)
        except UserError:
            continue
        assert "/" not in value and "\\" not in value and "\x00" not in value and not value.startswith(".")
        assert _inside(root, join_uri(str(root), value))
    try:
        layout = RunLayout(str(root), run_id)
        uri = layout.annotations(0, key, mode)
        uri2 = layout.eval(checkpoint, key)
    except UserError:
        return
    assert _inside(root / run_id, uri) and _inside(root / run_id, uri2)


@pytest.mark.parametrize("run_id", ["../x", "a/b", "..", "/etc"])
@pytest.mark.parametrize(
    "command",
    [
        ["runs", "show"],
        ["audit", "verify", "--run"],
        ["report", "--run"],
        ["audit", "turning-points", "--run"],
    ],
)
def test_commands_refuse_traversing_run_ids(tmp_path: Path, command: list[str], run_id: str) -> None:
    from ops.conftest import assert_user_error, run_cli

    assert_user_error(run_cli(*command, run_id, "--root", str(tmp_path / "runs")), "invalid run id")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_reward_keys_are_validated_where_they_become_paths(tmp_path: Path) -> None:
    from tpgrpo.rewards import make_reward

    layout = RunLayout(str(tmp_path), "r")
    for key in ["../evil", "a/b", "..", "UPPER", ""]:
        with pytest.raises(UserError, match="invalid reward key"):
            layout.rewards(0, key)
        with pytest.raises(UserError, match="invalid reward key"):
            layout.annotations(0, "ok", key)
    reward = make_reward({"name": "jpeg", "key": "../evil"})  # a key is just a name until it is a path
    with pytest.raises(UserError, match="invalid reward key"):
        layout.rewards(0, reward.key)


# --- the reward server ----------------------------------------------------------------------------


def test_reward_server_binds_to_loopback_by_default() -> None:
    import inspect

    from tpgrpo.cli.serve_cmd import serve_reward
    from tpgrpo.rewards.server import serve, serve_forever

    server = serve("shapes")
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_forever).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_reward).parameters["host"].default == "127.0.0.1"


def test_reward_server_refuses_an_oversized_request_unread() -> None:
    """A Content-Length over the cap is answered 413 at once: the body is never read (a client
    announcing 100 GB and sending nothing gets its answer without the server waiting)."""
    from tpgrpo.rewards.server import MAX_REQUEST_BYTES, serve

    assert MAX_REQUEST_BYTES <= 256 * 2**20  # a cap by default
    server = serve("shapes", max_request_bytes=1 << 20)
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            started = time.monotonic()
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 107374182400\r\n\r\n")
            head = s.recv(200)
            assert head.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 5
    finally:
        server.shutdown()
