"""Branch-stage efficiency: the batched ODE completions against their floor and the naive approach.

For each `T` and number of trajectories `n` (one rollout batch), on the tiny model:

- **stage**: `tpgrpo.stages.branch.complete_branches` — every active branch of a grid level in one
  batch, cut into chunks of the model's best batch size, first step of each branch reused from the
  rollout (`W` evaluations fewer per trajectory);
- **floor**: the same number of velocity evaluations at the model's best per-sample throughput,
  measured in the same run over batch sizes 1 … 256 (`floor_ratio = floor time / stage time`);
- **naive**: the reference code's approach — one ODE completion per branch point `k`, over the
  batch of `n` trajectories (`Σ_k (T − k)` calls of `n` samples; no velocity reuse);
- decoding the completions (the same for every approach) is timed separately.

Prints a table and writes `bench/results/branch.json`; the CPU figures for `T = 10`, `n = 8` are
the top-level keys `floor_ratio` and `naive_speedup`. `--quick` runs `T = 10` only (< 2 minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from _common import cpu_model

from tpgrpo.config import load_config_data
from tpgrpo.stages.batching import CANDIDATES, measure_throughput

RESULTS = Path(__file__).parent / "results" / "branch.json"


def load_tiny_policy(cfg: Any) -> Any:
    """The embedded tiny policy, or a random-weight model of the same architecture if not built."""
    from tpgrpo.models import load_policy
    from tpgrpo.models.factory import embedded_checkpoint_dir

    if (embedded_checkpoint_dir() / "model_index.json").is_file():
        return load_policy(cfg.model), "embedded:tiny"
    import tempfile

    from tpgrpo.world.prompts import VOCABULARY
    from tpgrpo.world.tiny import build_tiny_pipeline

    path = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_pipeline(VOCABULARY).save_pretrained(path)
    return load_policy(cfg.model.model_copy(update={"path": str(path)})), "random tiny (same architecture)"


# SD3.5-Medium's transformer (diffusers config of stabilityai/stable-diffusion-3.5-medium) and SD3's VAE.
SD35M_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD3_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
}


def sd35m_random_policy(device: str, dtype: str, layers: int) -> Any:
    """SD3.5-Medium's transformer and SD3's VAE with random weights, built on `device`.

    The text encoders keep SD3's output widths (CLIP-L 768 ⊕ CLIP-G 1280 pooled, T5 4096) with one
    layer each and the world's vocabulary: they run once per prompt and do not enter the timings.
    `layers` < 24 shrinks the transformer (a CPU smoke test of this path).
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5Tokenizer,
    )

    from tpgrpo.models.pipeline import DTYPES
    from tpgrpo.models.sd3 import SD3Policy
    from tpgrpo.world.prompts import VOCABULARY
    from tpgrpo.world.tiny import CLIP_BOS, CLIP_EOS, clip_vocabulary, t5_vocabulary

    vocab, merges = clip_vocabulary(VOCABULARY)
    clip_merges: Any = merges  # (a, b) pairs, as in world/tiny.py

    def clip(hidden: int, heads: int) -> Any:
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=hidden,
                intermediate_size=4 * hidden,
                num_hidden_layers=1,
                num_attention_heads=heads,
                max_position_embeddings=77,
                projection_dim=hidden,
                bos_token_id=vocab[CLIP_BOS],
                eos_token_id=vocab[CLIP_EOS],
                pad_token_id=vocab[CLIP_EOS],
            )
        )

    t5_tokenizer = T5Tokenizer(vocab=t5_vocabulary(VOCABULARY), extra_ids=0, model_max_length=256)
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation where the model runs (fast on a GPU)
        modules = {
            "transformer": SD3Transformer2DModel(**{**SD35M_TRANSFORMER, "num_layers": layers}),
            "vae": AutoencoderKL(**SD3_VAE),
            "text_encoder": clip(768, 12),
            "text_encoder_2": clip(1280, 20),
            "text_encoder_3": T5EncoderModel(
                T5Config(
                    vocab_size=len(t5_tokenizer),
                    d_model=4096,
                    d_kv=64,
                    d_ff=10240,
                    num_layers=1,
                    num_heads=64,
                    pad_token_id=0,
                    eos_token_id=1,
                )
            ),
        }
    for module in modules.values():
        if DTYPES[dtype] != torch.float32:
            module.to(DTYPES[dtype])
        module.eval()
    pipeline = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=clip_merges, model_max_length=77),
        tokenizer_2=CLIPTokenizer(vocab=vocab, merges=clip_merges, model_max_length=77),
        tokenizer_3=t5_tokenizer,
        **modules,
    )
    return SD3Policy(pipeline, max_sequence_length=256)


def sync(policy: Any) -> None:
    """Wait for the device (timings on a GPU end when its work does)."""
    if policy.device.type == "cuda":
        torch.cuda.synchronize()


def make_rollouts(policy: Any, cfg: Any, n: int) -> Any:
    """`n` trajectories sampled and encoded as the rollout stage does, as an Arrow table."""
    import pyarrow as pa

    from tpgrpo.stages.common import make_grid, trajectory_seed
    from tpgrpo.stages.rollout import Trajectory, sample_trajectories, trajectory_rows
    from tpgrpo.world.prompts import load_prompts

    prompts = [r.prompt for r in load_prompts("train")]
    trajs = [
        Trajectory(t, t // 8, 0, f"p{t}", prompts[(t // 8) % len(prompts)], trajectory_seed(0, 0, t))
        for t in range(n)
    ]
    grid = make_grid(cfg, policy)
    out = sample_trajectories(policy, cfg, grid, trajs)
    return pa.table(trajectory_rows(trajs, out, run_id="bench", iteration=0, cfg=cfg, grid=grid))


@torch.no_grad()
def naive(policy: Any, cfg: Any, table: Any, per_trajectory: bool = False) -> tuple[float, int, int]:
    """One ODE completion per branch point k over all n trajectories (no reuse): seconds, calls, evals.

    `per_trajectory`: one completion per branch point *and* trajectory (batch 1 with CFG), the
    approach of a loop over branches.
    """
    from tpgrpo.algorithm import ode_step
    from tpgrpo.schemas.tensors import decode_tensor_column

    states = decode_tensor_column(table, "states").to(policy.device)  # [n, T+1, C, h, w]
    sigmas = torch.tensor(table.column("sigmas")[0].as_py())
    n, t_steps = states.shape[0], states.shape[1] - 1
    w = int(table.column("window_size")[0].as_py())
    prompts = table.column("prompt").to_pylist()
    cond, uncond = policy.encode(prompts), policy.encode([""] * n)
    groups = [[i] for i in range(n)] if per_trajectory else [list(range(n))]
    calls = evals = 0
    sync(policy)
    start = time.perf_counter()
    for rows in groups:
        c, u = cond.select(torch.tensor(rows)), uncond.select(torch.tensor(rows))
        for k in range(w):
            x = states[rows, k]  # [b, C, h, w]
            for g in range(k, t_steps):
                sig = torch.full((len(rows),), float(sigmas[g]), device=policy.device)  # [b]
                v = policy.velocity(x, sig, c, u, cfg.sampling.guidance_scale)
                x = ode_step(x, v, float(sigmas[g]), float(sigmas[g + 1]))
                calls += 1
                evals += len(rows)
    sync(policy)
    return time.perf_counter() - start, calls, evals


def best_of(fn: Any, repeats: int) -> Any:
    """The fastest of `repeats` runs of `fn() -> (seconds, ...)` (the machine is shared: noise only adds)."""
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T = 10 only, n = 8 and 32, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--model", choices=("tiny", "sd35m-random"), default="tiny")
    ap.add_argument("--device", default="cpu", help="cuda for the GPU figures")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 512 (sd35m-random)")
    ap.add_argument("--layers", type=int, default=24, help="sd35m-random: transformer blocks (24 = SD3.5-M)")
    ap.add_argument("--steps", type=int, nargs="*", default=None, help="T values (default 6 10 16)")
    ap.add_argument(
        "--ns", type=int, nargs="*", default=None, help="trajectories per batch (default 8 16 32 64)"
    )
    ap.add_argument("--max-batch", type=int, default=CANDIDATES[-1], help="largest batch the sweep measures")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/branch.json (tiny, cpu), else branch_<model>_<device>.json",
    )
    args = ap.parse_args()
    steps_list = args.steps or ([10] if args.quick else [6, 10, 16])
    ns = args.ns or ([8, 32] if args.quick else [8, 16, 32, 64])
    repeats = args.repeats or (2 if args.quick else 3)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    size = args.resolution or (64 if args.model == "tiny" else 512)
    out = args.out or (
        RESULTS
        if (args.model, args.device) == ("tiny", "cpu")
        else RESULTS.with_name(f"branch_{args.model}_{args.device}.json")
    )
    model_section = {
        "path": "embedded:tiny",
        "height": size,
        "width": size,
        "device": args.device,
        "dtype": dtype,
    }

    def config(t_steps: int, **branch: Any) -> Any:
        return load_config_data(
            {"model": model_section, "sampling": {"num_steps": t_steps}, "branch": branch}
        )

    if args.model == "tiny":
        policy, model_name = load_tiny_policy(config(10))
    else:
        policy, model_name = (
            sd35m_random_policy(args.device, dtype, args.layers),
            f"sd35m-random ({args.layers} layers)",
        )
    print(f"model: {model_name}, {size}px, {dtype} on {args.device}")
    result_json = measure(
        policy,
        config,
        steps_list=steps_list,
        ns=ns,
        repeats=repeats,
        max_batch=args.max_batch,
        count_without_reuse=not args.device.startswith("cuda"),
    )
    result_json.update(
        model=model_name,
        device=args.device,
        device_name=torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model(),
        dtype=dtype,
        resolution=size,
        quick=args.quick,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result_json, indent=1))
    print(
        f"T={result_json['key_row']['T']}, n={result_json['key_row']['n']}: floor_ratio "
        f"{result_json['floor_ratio']:.2f}, naive_speedup {result_json['naive_speedup']:.2f} -> {out}"
    )


def measure(
    policy: Any,
    config: Any,
    *,
    steps_list: list[int],
    ns: list[int],
    repeats: int,
    max_batch: int,
    count_without_reuse: bool = True,
    repeats_by_n: dict[int, int] | None = None,
    per_branch: tuple[int, ...] = (),
    deadline: float | None = None,
    sink: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The throughput sweep and the stage / floor / naive table on `policy` (see the module doc).

    Args:
        config (`Callable[..., Config]`): `config(T, **branch_section)`, the run's config at `T` steps.
        count_without_reuse (`bool`): run the stage once more without the reused first steps, only to
            count its evaluations (on a GPU that costs a full stage run: then the count is derived,
            `n·W` more than with reuse, which the CPU runs check).
        repeats_by_n (`dict[int, int]`, *optional*): fewer timed repeats for the large batches.
        per_branch (`tuple[int, ...]`): the `n` values at which one completion per branch point
            and trajectory (batch 1 with CFG) is timed as well.
        deadline (`float`, *optional*): a `time.perf_counter()` value after which no new row starts
            (a short GPU lease); the rows left out are listed under `skipped`.
        sink (`dict`, *optional*): receives the sweep and each row as soon as it is measured (the
            caller keeps what was measured if a later row fails or time runs out).
    """
    from tpgrpo.stages.branch import complete_branches

    cfg10 = config(10)
    shape = policy.latent_shape(cfg10.model.height, cfg10.model.width)
    cond, uncond = policy.encode(["a photo of a red circle"]), policy.encode([""])
    candidates = [b for b in CANDIDATES if b <= max_batch]
    rates = {
        b: max(measure_throughput(policy, b, shape, cond, uncond, 4.5, repeats=3) for _ in range(repeats))
        for b in candidates
    }
    best = max(rates, key=lambda b: rates[b])
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, int]] = []
    if sink is not None:
        sink.update(throughput_by_batch={str(b): r for b, r in rates.items()}, best_batch=best, rows=rows)
    print(f"velocity evaluations/s by batch (CFG, best of {repeats}):")
    print("  " + "  ".join(f"{b}:{rates[b]:.1f}" for b in candidates) + f"  -> best batch {best}")

    for t_steps in steps_list:
        cfg = config(t_steps)
        for n in ns:
            if deadline is not None and time.perf_counter() > deadline:
                skipped.append({"T": t_steps, "n": n})
                continue
            reps = (repeats_by_n or {}).get(n, repeats)
            table = make_rollouts(policy, cfg, n)
            w = int(table.column("window_size")[0].as_py())
            secs, result = best_of(
                functools.partial(_timed, policy, complete_branches, policy, cfg, table, chunk=best), reps
            )
            if count_without_reuse:
                no_reuse = complete_branches(
                    policy, config(t_steps, reuse_rollout_velocity=False), table, chunk=best
                ).model_evals
                if no_reuse != result.model_evals + n * w:
                    raise AssertionError(
                        f"evaluations without reuse {no_reuse} != {result.model_evals} + n·W"
                    )
            else:
                no_reuse = result.model_evals + n * w  # one reused first step per branch start
            nv_secs, nv_calls, nv_evals = best_of(functools.partial(naive, policy, cfg, table), reps)
            decode_s, _ = _timed(policy, decode_all, policy, result.latents, cfg.model.eval_batch)
            floor_s = result.model_evals / rates[best]
            row = {
                "T": t_steps,
                "n": n,
                "W": w,
                "chunk": best,
                "repeats": reps,
                "stage_s": secs,
                "stage_calls": result.model_calls,
                "stage_evals": result.model_evals,
                "stage_calls_per_s": result.model_calls / secs,
                "plain_forward_calls_per_s": rates[best] / best,  # batched forwards of the chunk size
                "evals_without_reuse": no_reuse,
                "evals_per_trajectory": result.model_evals / n,
                "floor_s": floor_s,
                "floor_ratio": floor_s / secs,
                "naive_s": nv_secs,
                "naive_calls": nv_calls,
                "naive_evals": nv_evals,
                "naive_speedup": nv_secs / secs,
                "decode_s": decode_s,
                "images_per_s": len(result.latent_row) / (secs + decode_s),
                "naive_images_per_s": len(result.latent_row) / (nv_secs + decode_s),
            }
            if n in per_branch:
                pb_secs, pb_calls, _ = naive(policy, cfg, table, per_trajectory=True)
                row.update(per_branch_s=pb_secs, per_branch_calls=pb_calls, per_branch_speedup=pb_secs / secs)
            rows.append(row)
            extra = f" | per-branch {row['per_branch_s']:6.2f}s" if "per_branch_s" in row else ""
            print(
                f"T={t_steps:>2} n={n:>2}: stage {secs:6.2f}s {result.model_calls:>4} calls "
                f"{result.model_evals:>5} evals ({row['evals_per_trajectory']:.0f}/traj, "
                f"{no_reuse // n} without reuse) | floor {floor_s:6.2f}s "
                f"ratio {row['floor_ratio']:.2f} | naive {nv_secs:6.2f}s {nv_calls:>4} calls "
                f"-> x{row['naive_speedup']:.2f}{extra} | decode {decode_s:.2f}s",
                flush=True,
            )
    key = next((r for r in rows if r["T"] == 10 and r["n"] == 8), rows[0])
    return {
        "floor_ratio": key["floor_ratio"],
        "naive_speedup": key["naive_speedup"],
        "key_row": {"T": key["T"], "n": key["n"]},
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "throughput_by_batch": {str(b): r for b, r in rates.items()},
        "best_batch": best,
        "rows": rows,
        "skipped": skipped,
    }


def decode_all(policy: Any, latents: torch.Tensor, batch: int) -> list[Any]:
    """Decode `latents` on the policy's device in batches of `batch`, as the branch stage does."""
    return [policy.decode(latents[i : i + batch].to(policy.device)) for i in range(0, len(latents), batch)]


def _timed(policy: Any, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds of `fn(*args, **kwargs)` until the device is done, and its result."""
    sync(policy)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(policy)
    return time.perf_counter() - start, out


if __name__ == "__main__":
    main()
