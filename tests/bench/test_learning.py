"""bench/learning.py: the order in which it submits work, on a fresh `--root`.

The base evaluation reads checkpoint 0 of the first job's run; it used to be submitted before any
run existed and failed with "unknown run" at the very end of a benchmark. `submit_jobs` creates that
run first. Here the training and the evaluation are stand-ins that record what they found (a real
benchmark runs for hours); creating the run is real (`init_run` on the embedded tiny model).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tpgrpo.errors import UserError
from tpgrpo.pipeline.context import load_run
from tpgrpo.storage.blobs import blob_state

from . import load


def _learning() -> ModuleType:
    return load("learning")


def test_base_evaluation_finds_its_run_on_a_fresh_root(tmp_path: Path, monkeypatch: Any) -> None:
    learning = _learning()
    root = tmp_path / "bench-root"
    seen: list[tuple[str, str, str]] = []

    def evaluate(root_: Path, run_id: str, checkpoint: int, replicates: int, steps: int) -> dict[str, Any]:
        ctx = load_run(run_id, str(root_))  # UserError "unknown run" when it does not exist yet
        seen.append(("evaluate", run_id, blob_state(ctx.layout.checkpoint(checkpoint))))
        return {"checkpoint": checkpoint}

    def train(root_: Path, config: str, seed: int, *rest: Any) -> dict[str, Any]:
        seen.append(("train", f"{config}-s{seed}", ""))
        return {"run_id": f"{config}-s{seed}"}

    # the stand-in evaluation fails like the real one on a root without the run
    with pytest.raises(UserError, match="flow_grpo-s0"):
        evaluate(root, "flow_grpo-s0", 0, 1, 2)
    monkeypatch.setattr(learning, "evaluate_run", evaluate)
    monkeypatch.setattr(learning, "train_and_evaluate", train)
    jobs = [("flow_grpo", 0), ("tp", 0)]
    with ThreadPoolExecutor(1) as pool:  # one worker: submitted work runs in submission order
        base, runs = learning.submit_jobs(pool, root, jobs, 1.0, [], 1, 2)
        assert base.result() == {"checkpoint": 0}
        assert [r.result()["run_id"] for r in runs] == ["flow_grpo-s0", "tp-s0"]
    # the base evaluation ran first and found the first job's run with its checkpoint 0 finished
    assert seen == [
        ("evaluate", "flow_grpo-s0", "done"),
        ("train", "flow_grpo-s0", ""),
        ("train", "tp-s0", ""),
    ]
    # the run it created is the one training resumes (same config: creating it again is a no-op)
    assert learning.create_run(root, "flow_grpo", 0, []).layout.run_id == "flow_grpo-s0"


def test_dance_configuration_is_configs_dance_tiny() -> None:
    """The benchmark's `dance` configuration trains what configs/dance_tiny.yaml describes (on the
    benchmark's common settings), and the benchmark compares it with Flow-GRPO's terminal reward."""
    from tpgrpo.config import load_config

    learning = _learning()
    configs = Path(__file__).resolve().parents[2] / "configs"
    ours = load_config(configs / "tiny.yaml", learning.CONFIGS["dance"])
    theirs = load_config(configs / "dance_tiny.yaml")
    assert ours.model_copy(update={"name": theirs.name}) == theirs
    assert learning.config_mode("dance") == "flow_grpo" and learning.flow_reference("dance") == "flow_grpo"


def _fake_run(config: str, seed: int, iterations: int, strict: list[bool]) -> dict[str, Any]:
    """A finished run as `train_and_evaluate` returns it, with a tiny held-out set."""
    n = len(strict)
    history = [
        {
            "iteration": i,
            "seconds": 10.0,
            "wall_seconds": 10.0,
            "model_evals": 100,
            "train_reward": 0.5 + 0.01 * i,
            "turning_points": 0,
            "kept": 0,
            "steps": [4, 4],
            "tp_by_step": [0, 0],
            "kept_by_step": [0, 0],
            "zero_increment_by_step": [0, 0],
            "nonzero_advantage_by_step": [4, 3],
        }
        for i in range(iterations)
    ]
    evaluation = {
        "checkpoint": iterations,
        "strict": strict,
        "score": [0.5 + 0.1 * s for s in strict],
        "task": ["counting", "position"] * (n // 2),
        "quality": {k: [0.1] * n for k in ("background_dev", "stray_frac", "specks")},
        "summary": {"n": n},
    }
    run = {"run_id": f"{config}-s{seed}", "config": config, "seed": seed, "iterations": iterations}
    return run | {"history": history, "eval": evaluation}


def test_archived_runs_resume_without_their_root(tmp_path: Path, monkeypatch: Any) -> None:
    """Finished runs are archived (committed JSON); on a fresh clone, where `--root` is gone, the
    benchmark reads them back instead of training again, and reports from them."""
    learning = _learning()
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(learning, "ARCHIVE", tmp_path / "results" / "learning_runs")
    folder = learning.archive_dir(600.0, 2, 10)
    assert folder.name == "budget600-r2-e10"
    flow = _fake_run("flow_grpo", 0, 40, [True, False, True, True])
    partner = _fake_run("tp_constrained", 0, 14, [True, False, False, True])
    # the reference's evaluation at its partner's iteration count is due once both are finished
    found: dict[tuple[str, int], Any] = {("flow_grpo", 0): flow, ("tp_constrained", 0): None}
    assert learning.ready_pairs(found, flow) == []
    found[("tp_constrained", 0)] = partner
    assert learning.ready_pairs(found, partner) == [(flow, partner)]
    flow["matched_iterations"], flow["eval_matched"] = 14, _fake_run("flow_grpo", 0, 14, [True] * 4)["eval"]
    assert learning.ready_pairs(found, partner) == []
    base = _fake_run("base", 0, 0, [False, False, True, True])["eval"]
    for name, doc in (("flow_grpo-s0", flow), ("tp_constrained-s0", partner), ("base", base)):
        learning.archive(folder, name, doc)
    assert not list(folder.glob(".*"))  # no temporary file left behind

    root = tmp_path / "fresh-root"  # nothing was ever trained here
    back = learning.finished_run(root, "flow_grpo", 0, 2, 10, folder)
    assert back is not None and back["iterations"] == 40 and back["eval"]["strict"] == flow["eval"]["strict"]
    assert learning.finished_run(root, "flow_grpo", 0, 2, 10) is None  # without the archive: unfinished

    argv = ["learning.py", "--configs", "flow_grpo", "tp_constrained", "--seeds", "1", "--replicates", "2"]
    monkeypatch.setattr("sys.argv", [*argv, "--root", str(root), "--workers", "1"])
    learning.main()
    assert not root.exists()  # nothing trained, nothing evaluated
    out = json.loads((tmp_path / "results" / "learning.json").read_text())
    assert out["missing_runs"] == []
    assert [r["run_id"] for r in out["runs"]] == ["flow_grpo-s0", "tp_constrained-s0"]
    # paired with the archived base: flow_grpo gains one strict success in four images
    assert out["summary"]["flow_grpo"]["paired_diff_vs_base"][0] == pytest.approx(0.25)
    assert out["summary"]["tp_constrained"]["paired_diff_vs_flow_grpo_equal_iterations"][0] == pytest.approx(
        -0.5
    )
    # the same on the mean score (0.5 + 0.1 per strict success here)
    assert out["summary"]["flow_grpo"]["paired_score_diff_vs_base"][0] == pytest.approx(0.025)
    assert out["summary"]["tp_constrained"]["paired_score_diff_vs_flow_grpo"][0] == pytest.approx(-0.025)
    assert "pref" not in out["summary"]["base"]  # trained on shapes: no second reward


def test_tasks_restrict_training_evaluation_and_archive(tmp_path: Path) -> None:
    """`--tasks counting`: every run trains on counting prompts only, is evaluated on counting's
    held-out prompts (as `tpgrpo evaluate` takes them), and is archived apart from all-task runs."""
    from tpgrpo.pipeline.evaluate import eval_prompts
    from tpgrpo.stages.prompts import read_prompt_source

    learning = _learning()
    assert learning.archive_dir(450.0, 49, 10, ["counting"]).name == "budget450-r49-e10-counting"
    assert learning.archive_dir(450.0, 49, 10, None).name == "budget450-r49-e10"
    ctx = learning.create_run(tmp_path, "flow_grpo", 0, learning.task_sets(["counting"]))
    assert ctx.cfg.rollout.tasks == ["counting"]
    _, rows = eval_prompts(ctx, None, None)
    test_rows = read_prompt_source("test")
    assert {r["task"] for r in rows} == {"counting"}
    assert len(rows) == sum(r["task"] == "counting" for r in test_rows) < len(test_rows)


def test_shapes_pref_runs_are_evaluated_on_both_rewards() -> None:
    """`--reward shapes_pref`: one sampling, scored by the `shapes` detector (accuracy and quality)
    and by the training reward (`pref`); archived apart from the `shapes` protocol."""
    import numpy as np

    from tpgrpo.rewards import make_reward

    learning = _learning()
    folder = learning.archive_dir(450.0, 49, 10, ["counting"], "shapes_pref")
    assert folder.name == "budget450-r49-e10-counting-shapes_pref"
    shapes, pref = make_reward("shapes"), make_reward("shapes_pref")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    images[0] = 240  # a blank image
    prompts = ["a photo of two red circles", "a photo of a blue square", "a photo of three green triangles"]
    both = learning.WithTrainingReward(shapes, pref).score(images, prompts)
    alone = shapes.score(images, prompts)
    np.testing.assert_array_equal(both.score, alone.score)
    np.testing.assert_array_equal(both.strict, alone.strict)
    assert [d["pref"] for d in both.details] == pref.score(images, prompts).score.tolist()
    assert all(set(d) - {"pref"} == set(a) for d, a in zip(both.details, alone.details, strict=True))


def test_estimator_configurations_are_compared_with_exact_completions() -> None:
    """Issue 18: `tp_constrained_x0` and `tp_constrained_coarse` differ from `tp_constrained` only in
    `branch.estimator`; the summary pairs them with it, image by image and seed by seed, and the
    tables list them against it."""
    import numpy as np

    learning = _learning()
    assert learning.exact_reference("tp_constrained_x0") == "tp_constrained"
    assert learning.exact_reference("tp_constrained_coarse") == "tp_constrained"
    assert learning.exact_reference("tp_constrained") is None
    assert learning.exact_reference("flow_grpo") is None

    base_score = [0.5, 0.5, 0.5, 0.5]
    shift = {"flow_grpo": 0.1, "tp_constrained": 0.05, "tp_constrained_x0": 0.0}

    def run(config: str, seed: int) -> dict[str, Any]:
        score = [v + shift[config] + 0.01 * seed for v in base_score]
        history = [
            {
                "train_reward": reward,
                "model_evals": 100,
                "seconds": 1.0,
                "steps": [4, 4],
                "nonzero_advantage_by_step": [4, 4],
                "zero_increment_by_step": [0, 0],
            }
            for reward in ([0.4, 0.5, 0.6] if config == "flow_grpo" else [0.5])
        ]
        evaluation = {
            "strict": [1, 0, 0, 0] if config == "tp_constrained_x0" else [1, 1, 0, 0],
            "score": score,
            "task": ["counting"] * 4,
            "quality": {k: [0.0] * 4 for k in learning.QUALITY},
        }
        iterations = 3 if config == "tp_constrained_x0" else 1
        r: dict[str, Any] = {"run_id": f"{config}-s{seed}", "config": config, "seed": seed,
                             "iterations": iterations, "history": history, "eval": evaluation}  # fmt: skip
        if config == "flow_grpo":  # evaluated at its partner's (tp_constrained's) iteration count
            r["matched_iterations"], r["eval_matched"] = 1, {**evaluation, "strict": [1, 0, 0, 0]}
        return r

    base = {"strict": [0, 0, 0, 0], "score": base_score, "task": ["counting"] * 4,
            "quality": {k: [0.0] * 4 for k in learning.QUALITY}}  # fmt: skip
    runs = [run(c, s) for c in shift for s in range(3)]
    summary = learning.summarize(runs, base)
    x0 = summary["tp_constrained_x0"]
    assert x0["exact_reference"] == "tp_constrained"
    np.testing.assert_allclose(x0["paired_score_diff_vs_exact"], [-0.05, 0.0], atol=1e-12)
    np.testing.assert_allclose(x0["paired_diff_vs_exact"], [-0.25, 0.0], atol=1e-12)
    np.testing.assert_allclose(x0["paired_score_diff_vs_flow_grpo"], [-0.1, 0.0], atol=1e-12)
    assert summary["tp_constrained"]["paired_score_diff_vs_exact"] is None
    # equal iterations only where the reference was evaluated within one iteration of the run's own
    np.testing.assert_allclose(
        summary["tp_constrained"]["paired_diff_vs_flow_grpo_equal_iterations"], [0.25, 0.0], atol=1e-12
    )
    assert x0["paired_diff_vs_flow_grpo_equal_iterations"] is None
    # Flow-GRPO's smoothed train reward (0.4, 0.45, 0.5) first reaches x0's final 0.5 at iteration 3
    assert x0["flow_grpo_reaches_this_final"] == {"iteration": 3, "model_evals": 300.0, "seconds": 3.0}
    assert summary["flow_grpo"]["flow_grpo_reaches_this_final"] is None
    (_, header, rows), *_ = [t for t in learning.tables(summary) if "exact" in t[0]]
    assert [r[:2] for r in rows] == [["tp_constrained_x0", "tp_constrained"]]
    assert rows[0][header.index("score vs exact")] == "-0.050±0.000"


def test_flow_reference_from_another_budget(tmp_path: Path, monkeypatch: Any) -> None:
    """`--flow-from 600`: step-level runs at a larger budget are read against the Flow-GRPO runs
    archived at 600 s of the same protocol (same held-out images): their final train reward is the
    target of "reaches flow", their final adapters are the "vs flow" reference; nothing of Flow-GRPO
    is trained at the new budget."""
    learning = _learning()
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(learning, "ARCHIVE", tmp_path / "results" / "learning_runs")
    short, long = learning.archive_dir(600.0, 2, 10), learning.archive_dir(1200.0, 2, 10)
    base = _fake_run("base", 0, 0, [False, False, True, True])["eval"]
    flow = _fake_run("flow_grpo", 0, 40, [True, False, True, True])  # train reward 0.5 … 0.89
    flow["matched_iterations"], flow["eval_matched"] = 14, _fake_run("flow_grpo", 0, 14, [True] * 4)["eval"]
    tp = _fake_run("tp_constrained", 0, 45, [True, True, True, True])  # reaches 0.89 at iteration 40
    # trained on shapes_pref: every evaluation also carries the training reward's score
    for doc, pref in ((base, [0.2, 0.2, 0.4, 0.4]), (flow["eval"], [0.3] * 4), (tp["eval"], [0.35] * 4)):
        doc["pref"] = pref
    for name, doc in (("flow_grpo-s0", flow), ("base", base)):
        learning.archive(short, name, doc)
    for name, doc in (("tp_constrained-s0", tp), ("base", base)):
        learning.archive(long, name, doc)

    root = tmp_path / "fresh-root"
    argv = ["learning.py", "--configs", "flow_grpo", "tp_constrained", "--seeds", "1", "--replicates", "2"]
    monkeypatch.setattr("sys.argv", [*argv, "--budget", "1200", "--flow-from", "600", "--root", str(root)])
    learning.main()
    assert not root.exists()  # flow_grpo was not trained at 1200 s
    out = json.loads((tmp_path / "results" / "learning.json").read_text())
    assert out["budget_s"] == 1200 and out["flow_grpo_budget_s"] == 600
    assert out["missing_runs"] == []
    summary = out["summary"]
    assert summary["flow_grpo"]["iterations"] == 40
    assert summary["flow_grpo_final_train_reward"] == pytest.approx(0.88)  # trailing mean of 0.87-0.89
    assert summary["tp_constrained"]["reaches_flow_grpo_final"]["iteration"] == 40
    assert summary["tp_constrained"]["paired_diff_vs_flow_grpo"][0] == pytest.approx(0.25)
    assert summary["tp_constrained"]["paired_pref_diff_vs_flow_grpo"][0] == pytest.approx(0.05)
    assert summary["flow_grpo"]["paired_pref_diff_vs_base"][0] == pytest.approx(0.0)
    (_, header, rows), *_ = learning.tables(summary)
    assert all(len(r) == len(header) for r in rows)
    by_config = {r[0]: r for r in rows}
    assert by_config["tp_constrained"][header.index("pref vs flow")].startswith("0.050±")  # one seed: no CI
    assert by_config["flow_grpo"][header.index("pref vs flow")] == "-"
    # the reference's equal-iteration evaluation was its 600-s partner's, not this run's
    assert summary["tp_constrained"]["paired_diff_vs_flow_grpo_equal_iterations"] is None
    assert (
        (tmp_path / "results" / "learning.md").read_text().startswith("flow_grpo: its runs archived at 600 s")
    )

    # another protocol's base, or a seed not archived at that budget: a clear error naming the fix
    other = learning.archive_dir(300.0, 2, 10)
    learning.archive(other, "flow_grpo-s0", flow)
    learning.archive(other, "base", _fake_run("base", 0, 0, [True, False, True, True])["eval"])
    with pytest.raises(UserError, match=r"same held-out images.*fix: give --flow-from"):
        learning.reference_runs(other, [0], base)
    with pytest.raises(UserError, match=r"no archived flow_grpo-s1; fix:"):
        learning.reference_runs(short, [0, 1], base)
