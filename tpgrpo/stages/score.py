"""Stage 3, score: a registered reward on the stored branch images (SPEC §4: ρ_j = R(C(s_{w0+j}))).

Reads images, never generates: rescoring a stored run with a new reward model is this stage with
another reward. Non-finite or missing scores stop the stage (`RewardError`): no NaN reaches an
advantage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.compute as pc

from tpgrpo.rewards import Reward
from tpgrpo.schemas.images import decode_png
from tpgrpo.stages.progress import progress_bar
from tpgrpo.storage import DatasetWriter, iter_batches, read_table


def run_shard(
    reward: Reward,
    *,
    iteration: int,
    rollouts_uri: str,
    branches_uri: str,
    output: str,
    trajectory_ids: list[int] | None = None,
    shard: int = 0,
    batch_size: int = 256,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Score the branch images of `trajectory_ids` (all when None) into part files of `output`.

    Returns:
        stats: `images`, `score_mean`, `strict_mean` (NaN-free; -1 when the reward has no strict
        verdict), `seconds`.
    """
    started = time.perf_counter()
    flt = pc.field("trajectory_id").isin(trajectory_ids) if trajectory_ids is not None else None
    meta = read_table(
        rollouts_uri,
        "rollouts",
        columns=["trajectory_id", "prompt"],
        filter=flt,
        storage_options=storage_options,
    )
    prompt_of = dict(
        zip(meta.column("trajectory_id").to_pylist(), meta.column("prompt").to_pylist(), strict=True)
    )
    total = 0
    scores: list[float] = []
    stricts: list[bool] = []
    manifest_rows = _branch_rows(branches_uri, flt, storage_options)
    bar = progress_bar(total=manifest_rows, desc=f"score {reward.key} it{iteration}", unit="img")
    with DatasetWriter(output, "rewards", shard=shard, storage_options=storage_options) as writer:
        for batch in iter_batches(
            branches_uri,
            "branches",
            columns=["trajectory_id", "boundary", "image"],
            filter=flt,
            batch_size=batch_size,
            storage_options=storage_options,
        ):
            if batch.num_rows == 0:  # a filtered scan yields empty batches for other shards' parts
                continue
            tids = batch.column("trajectory_id").to_pylist()
            images = np.stack([decode_png(b) for b in batch.column("image").to_pylist()])  # [n, H, W, 3]
            result = reward.score(images, [prompt_of[t] for t in tids])
            if len(result) != len(tids):
                from tpgrpo.errors import RewardError

                raise RewardError(
                    f"reward {reward.key!r} returned {len(result)} scores for {len(tids)} images"
                )
            writer.write(
                {
                    "iteration": [iteration] * len(tids),
                    "trajectory_id": tids,
                    "boundary": batch.column("boundary").to_pylist(),
                    "reward_key": [reward.key] * len(tids),
                    "score": result.score.tolist(),
                    "strict": result.strict.tolist() if result.strict is not None else [None] * len(tids),
                    "details": [json.dumps(d, sort_keys=True) for d in result.details],
                }
            )
            total += len(tids)
            scores.extend(result.score.tolist())
            if result.strict is not None:
                stricts.extend(result.strict.tolist())
            bar.update(len(tids))
    bar.close()
    return {
        "images": float(total),
        "score_sum": float(np.sum(scores)) if scores else 0.0,
        "strict_sum": float(np.sum(stricts)) if stricts else 0.0,
        "strict_count": float(len(stricts)),
        "seconds": time.perf_counter() - started,
    }


def _branch_rows(uri: str, flt: Any, storage_options: Mapping[str, Any] | None) -> int:
    table = read_table(
        uri, "branches", columns=["trajectory_id"], filter=flt, storage_options=storage_options
    )
    return int(table.num_rows)
