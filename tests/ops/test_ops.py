"""`tpgrpo rescore`, `tpgrpo annotate`, `tpgrpo evaluate` on copies of a real stored run."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrpo.storage import read_manifest, read_table

from .conftest import EVAL_STEPS, StoredRun, assert_user_error, file_digests, run_cli

NEW_SPEC = '{"name": "jpeg", "quality": 50, "key": "jpeg_q50"}'


def test_annotate_an_ablation_from_stored_scores(run_copy: StoredRun) -> None:
    """No Prefect, no model: a new mode over the stored scores; the run's own data unchanged."""
    from tpgrpo.algorithm import AnnotationConfig, annotate

    before = file_digests(run_copy.dir)
    key = run_copy.reward_key
    result = run_cli("annotate", *run_copy.args("--reward", key, "--mode", "incremental", "--mode", "tp"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["iter", "mode", "initial", "final", "tps", "kept", "zero-adv"]
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["0", "incremental"],
        ["0", "tp"],
        ["1", "incremental"],
        ["1", "tp"],
    ]
    assert all(line.split()[4:6] == ["0", "0"] for line in lines[1:5] if "incremental" in line)
    for i in (0, 1):
        ann = read_table(run_copy.layout.annotations(i, key, "incremental"), "annotations").sort_by(
            [("trajectory_id", "ascending"), ("step", "ascending")]
        )
        assert ann.num_rows == 8 * 3
        # incremental mode trains each step on its plain increment d_j = ρ_{j+1} − ρ_j
        np.testing.assert_allclose(ann.column("step_reward").to_numpy(), ann.column("increment").to_numpy())
        rewards = read_table(run_copy.layout.rewards(i, key), "rewards").sort_by(
            [("trajectory_id", "ascending"), ("boundary", "ascending")]
        )
        rho = rewards.column("score").to_numpy().reshape(8, 4)  # [N, W+1]
        np.testing.assert_allclose(ann.column("increment").to_numpy().reshape(8, 3), np.diff(rho, axis=1))
        tp = read_table(run_copy.layout.annotations(i, key, "tp"), "annotations").sort_by(
            [("trajectory_id", "ascending"), ("step", "ascending")]
        )
        batches = np.zeros(8, dtype=np.int64)
        expected = annotate(rho, batches, AnnotationConfig(mode="tp"), trajectory_ids=np.arange(8))
        np.testing.assert_array_equal(
            tp.column("kept").to_numpy(zero_copy_only=False).reshape(8, 3), expected.kept
        )
    after = file_digests(run_copy.dir, skip=("/incremental/", "/tp/"))
    assert after == before  # the run's own datasets, byte for byte
    again = run_cli("annotate", *run_copy.args("--reward", key, "--mode", "incremental", "--iters", "1"))
    assert again.exit_code == 0 and len(again.stdout.splitlines()) == 3  # header, iteration 1, location


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (
            ["--mode", "greedy"],
            ["unknown reward mode 'greedy'", "flow_grpo, incremental, tp, tp_constrained"],
        ),
        (["--mode", "tp", "--iters", "3:5"], ["iteration(s) 3 … 4 outside run", "0 … 1"]),
        (["--mode", "tp", "--iters", "one"], ["invalid --iters 'one'", "A:B"]),
        (["--mode", "tp", "--iters", "1:1"], ["selects no iteration"]),
        (["--mode", "tp_constrained", "--force"], ["--force would replace", "trained on"]),
    ],
)
def test_annotate_bad_arguments(stored_run: StoredRun, extra: list[str], fragments: list[str]) -> None:
    result = run_cli("annotate", *stored_run.args("--reward", stored_run.reward_key, *extra))
    assert_user_error(result, *fragments)


def test_annotate_unknown_reward_key(stored_run: StoredRun) -> None:
    result = run_cli("annotate", *stored_run.args("--reward", "pickscore", "--mode", "tp"))
    assert_user_error(
        result, "no stored scores for reward key 'pickscore'", stored_run.reward_key, "tpgrpo rescore"
    )


@pytest.mark.integration
def test_rescore_writes_new_scores_and_leaves_the_run_untouched(run_copy: StoredRun) -> None:
    """The real rescore flow: new reward key, two modes; original checksums unchanged; verify passes."""
    before = file_digests(run_copy.dir)
    manifests = {
        p: d for p, d in before.items() if p.endswith("_MANIFEST.json") or p.endswith("_CHECKPOINT.json")
    }
    result = run_cli(
        "rescore", *run_copy.args("--reward", NEW_SPEC, "--mode", "tp", "--mode", "tp_constrained")
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"rescored run {run_copy.run_id} with reward jpeg_q50 (run reward: {run_copy.reward_key})" in out
    rows = [line.split() for line in out.splitlines() if line[:4].strip() in ("0", "1")]
    assert [r[:2] for r in rows] == [
        ["0", "tp"],
        ["0", "tp_constrained"],
        ["1", "tp"],
        ["1", "tp_constrained"],
    ]
    for i in (0, 1):
        scores = read_manifest(run_copy.layout.rewards(i, "jpeg_q50"))
        assert scores.rows == 32 and scores.inputs == {
            "branches": read_manifest(run_copy.layout.branches(i)).hash
        }
        table = read_table(run_copy.layout.rewards(i, "jpeg_q50"), "rewards")
        assert set(table.column("reward_key").to_pylist()) == {"jpeg_q50"}
        assert np.all(table.column("score").to_numpy() < 0)  # −kB of a JPEG
        for mode in ("tp", "tp_constrained"):
            ann = read_manifest(run_copy.layout.annotations(i, "jpeg_q50", mode))
            assert ann.rows == 24 and ann.inputs["rewards"] == scores.hash
        score_row = next(r for r in rows if r[0] == str(i))
        assert float(score_row[2]) == pytest.approx(scores.metrics["score_mean"], abs=5e-5)
    after = file_digests(run_copy.dir, skip=("/jpeg_q50",))
    assert after == before
    assert {p: after[p] for p in manifests} == manifests
    verify = run_cli("audit", "verify", *run_copy.args())
    assert verify.exit_code == 0, verify.output
    show = run_cli("runs", "show", run_copy.run_id, "--root", str(run_copy.root))
    assert "rescored   iteration 0: jpeg_q50; iteration 1: jpeg_q50" in show.stdout
    # a second run finds everything finished: nothing is rewritten
    stamps = {i: read_manifest(run_copy.layout.rewards(i, "jpeg_q50")).created for i in (0, 1)}
    again = run_cli("rescore", *run_copy.args("--reward", NEW_SPEC, "--iters", "1:", "--mode", "tp"))
    assert again.exit_code == 0, again.output
    assert read_manifest(run_copy.layout.rewards(1, "jpeg_q50")).created == stamps[1]
    # and an audit reads the new key
    tps = run_cli("audit", "turning-points", *run_copy.args("--reward", "jpeg_q50", "--mode", "tp"))
    assert tps.exit_code == 0 and "turning points of reward jpeg_q50, mode tp" in tps.stdout


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--reward", "nope"], ["unknown reward 'nope'", "registered rewards", "shapes", "jpeg"]),
        (["--reward", '{"name": "jpeg", "quality": 500}'], ["quality must be an integer in 1 … 95"]),
        (["--reward", '{"name": "jpeg", "colour": 1}'], ["bad parameters ['colour']", "quality"]),
        (["--reward", '{"name": "jpeg",'], ["is not valid JSON", "quote it"]),
        (["--reward", '["jpeg"]'], ["must be an object with a string 'name'"]),
        (["--reward", '{"quality": 5}'], ["must be an object with a string 'name'"]),
        (["--reward", "jpeg/../x"], ["invalid --reward"]),
        (
            [*["--reward", NEW_SPEC], "--iters", "0:9"],
            ["iteration(s) 2 … 8 outside run", "stored branches are 0 … 1"],
        ),
        ([*["--reward", NEW_SPEC], "--mode", "fancy"], ["unknown reward mode 'fancy'"]),
    ],
)
def test_rescore_bad_arguments(stored_run: StoredRun, extra: list[str], fragments: list[str]) -> None:
    """Every argument is checked before the flow (and the run lock): one message, exit code 2."""
    assert_user_error(run_cli("rescore", *stored_run.args(*extra)), *fragments)


def test_rescore_refuses_the_run_reward_key(stored_run: StoredRun) -> None:
    key = stored_run.reward_key
    other = f'{{"name": "jpeg_incompressibility", "key": "{key}"}}'
    assert_user_error(
        run_cli("rescore", *stored_run.args("--reward", other)), f"reward key '{key}' holds the scores"
    )


def test_rescore_unknown_run(stored_run: StoredRun) -> None:
    result = run_cli("rescore", "--run", "gone", "--root", str(stored_run.root), "--reward", "jpeg")
    assert_user_error(result, "unknown run 'gone'", stored_run.run_id)


@pytest.mark.integration
def test_evaluate_a_checkpoint(run_copy: StoredRun) -> None:
    """The real evaluate flow: EMA weights of checkpoint 1, 3 ODE steps, one prompt per task."""
    result = run_cli(
        "evaluate", *run_copy.args("--checkpoint", "1", "--steps", "3", "--prompts-per-task", "1")
    )
    assert result.exit_code == 0, result.output
    key = run_copy.reward_key
    uri = run_copy.layout.eval("iter=0001.steps=3", key)
    manifest = read_manifest(uri)
    table = read_table(uri, "eval")
    assert manifest.rows == table.num_rows == 6
    assert manifest.model_evals == 6 * 3
    assert set(table.column("checkpoint").to_pylist()) == {"iter=0001.steps=3"}
    assert manifest.inputs == {"checkpoint": read_manifest_checkpoint(run_copy, 1)}
    lines = result.stdout.splitlines()
    assert lines[0] == f"run {run_copy.run_id} checkpoint 1 (iter=0001.steps=3), reward {key}, 6 images"
    tasks = sorted(table.column("task").to_pylist())
    scores = dict(zip(table.column("task").to_pylist(), table.column("score").to_pylist(), strict=True))
    body = {line.split()[0]: line.split() for line in lines[2:8]}
    assert sorted(body) == tasks
    for task in tasks:
        assert body[task][1] == "1" and float(body[task][2]) == pytest.approx(scores[task], abs=5e-5)
    assert lines[8].split()[:3] == ["overall", "6", f"{np.mean(list(scores.values())):.4f}"]
    assert lines[-1] == f"eval: {uri}"
    # paired noise: the same seeds as the fixture's evaluation of the same prompts
    paired = read_table(run_copy.layout.eval(f"iter=0001.steps={EVAL_STEPS}", key), "eval")
    assert sorted(paired.column("seed").to_pylist()) == sorted(table.column("seed").to_pylist())
    # rerunning finds it finished
    again = run_cli(
        "evaluate", *run_copy.args("--checkpoint", "1", "--steps", "3", "--prompts-per-task", "1")
    )
    assert again.exit_code == 0 and read_manifest(uri).created == manifest.created


def read_manifest_checkpoint(run: StoredRun, k: int) -> str:
    from tpgrpo.storage.blobs import read_blob_manifest

    return read_blob_manifest(run.layout.checkpoint(k)).hash


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--checkpoint", "5"], ["checkpoint 5 outside run", "finished checkpoints are 0 … 2"]),
        (["--checkpoint", "best"], ["invalid --checkpoint 'best'", "latest or all"]),
        (["--reward", "nope"], ["unknown reward 'nope'"]),
        (["--steps", "0"], ["--steps must be in 1 … 1000"]),
        (["--prompts-per-task", "0"], ["--prompts-per-task must be at least 1"]),
        (["--prompts", "missing.jsonl"], ["prompt file 'missing.jsonl' not found"]),
    ],
)
def test_evaluate_bad_arguments(stored_run: StoredRun, extra: list[str], fragments: list[str]) -> None:
    assert_user_error(run_cli("evaluate", *stored_run.args(*extra)), *fragments)


def test_evaluation_sampled_with_the_ema_weights(stored_run: StoredRun) -> None:
    """The stored eval images of checkpoint 2 are pure-ODE samples of its EMA adapter, bit for bit."""
    from tpgrpo.pipeline.context import load_run
    from tpgrpo.schemas.images import decode_png
    from tpgrpo.stages.checkpoints import load_adapter
    from tpgrpo.stages.evaluate import sample_ode
    from tpgrpo.stages.prompts import read_prompt_source

    ctx = load_run(stored_run.run_id, str(stored_run.root))
    text = {r["prompt_id"]: r["prompt"] for r in read_prompt_source("test")}
    stored = {}
    for k in (0, 2):
        table = read_table(
            stored_run.layout.eval(f"iter={k:04d}.steps={EVAL_STEPS}", stored_run.reward_key), "eval"
        )
        stored[k] = (
            [text[p] for p in table.column("prompt_id").to_pylist()],
            table.column("seed").to_pylist(),
            np.stack([decode_png(b) for b in table.column("image").to_pylist()]),
        )
    assert stored[0][:2] == stored[2][:2]  # paired: same prompts, same noise
    policy = ctx.policy()

    def sample(ema: bool) -> np.ndarray:
        load_adapter(stored_run.layout.checkpoint(2), policy, ema=ema)
        texts, seeds, _ = stored[2]
        g = ctx.cfg.sampling.guidance_scale
        return sample_ode(policy, texts, seeds, num_steps=EVAL_STEPS, guidance_scale=g, height=64, width=64)

    ema_images, live_images = sample(ema=True), sample(ema=False)
    np.testing.assert_array_equal(ema_images, stored[2][2])
    assert not np.array_equal(live_images, ema_images)  # the EMA differs from the live adapter
    assert not np.array_equal(stored[0][2], stored[2][2])  # and training moved it off the base model


def test_evaluate_all_names_a_damaged_checkpoint(run_copy: StoredRun) -> None:
    """`--checkpoint all` never stops silently at a deleted checkpoint with finished ones after it."""
    import shutil

    shutil.rmtree(run_copy.dir / "checkpoints" / "iter=0001")
    result = run_cli("evaluate", *run_copy.args("--checkpoint", "all", "--steps", str(EVAL_STEPS)))
    assert_user_error(
        result,
        "checkpoint 1 of run",
        "later checkpoints (2) are finished",
        f"tpgrpo audit verify --run {run_copy.run_id}",
    )


def test_annotate_combines_stored_rewards(run_copy: StoredRun) -> None:
    """`--weight KEY=W --aggregate advantage`: several stored rewards combined without generating. A
    reward combined with a copy of itself (weights 1 and 0.5) has 1.5 × its unclipped advantages."""
    import shutil

    from tpgrpo.algorithm import AnnotationConfig, advantages, annotate

    key = run_copy.reward_key
    for i in (0, 1):  # a second stored reward: the run's own scores under another key
        shutil.copytree(run_copy.layout.rewards(i, key), run_copy.layout.rewards(i, "twin"))
    weights = ["--weight", f"{key}=1", "--weight", "twin=0.5"]
    result = run_cli(
        "annotate", *run_copy.args("--reward", "twin", "--mode", "tp", "--aggregate", "advantage", *weights)
    )
    assert result.exit_code == 0, result.output
    for i in (0, 1):
        uri = run_copy.layout.annotations(i, "twin", "tp")
        manifest = read_manifest(uri)
        assert set(manifest.inputs) == {"rewards", "rollouts", f"rewards/{key}", "rewards/twin"}
        assert manifest.metrics["rewards_combined"] == 2
        ann = read_table(uri, "annotations").sort_by([("trajectory_id", "ascending"), ("step", "ascending")])
        rho = (
            read_table(run_copy.layout.rewards(i, key), "rewards")
            .sort_by([("trajectory_id", "ascending"), ("boundary", "ascending")])
            .column("score")
            .to_numpy()
            .reshape(8, 4)
        )
        plain = annotate(rho, np.zeros(8, np.int64), AnnotationConfig(mode="tp"), trajectory_ids=np.arange(8))
        groups = ann.column("group_id").to_numpy().reshape(8, 3)[:, 0]
        expected = np.clip(1.5 * advantages(plain.step_reward, groups, clip=None), -5, 5)
        np.testing.assert_allclose(ann.column("advantage").to_numpy().reshape(8, 3), expected, atol=1e-12)
        np.testing.assert_allclose(
            ann.column("step_reward").to_numpy().reshape(8, 3), 1.5 * plain.step_reward
        )
    for bad, fragments in (
        (["--weight", "twin"], ["--weight 'twin': expected KEY=WEIGHT"]),
        (["--weight", "nope=1"], ["no stored scores for reward key 'nope'"]),
        (["--weight", "twin=0"], ["advantage.weights are all 0"]),
        (["--aggregate", "sum"], ["advantage.aggregate", "'reward' or 'advantage'"]),
    ):
        assert_user_error(
            run_cli("annotate", *run_copy.args("--reward", "twin", "--mode", "incremental", *bad)), *fragments
        )
