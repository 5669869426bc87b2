"""SD3.5-Medium size on a GPU, as one prepared script: branch speed-up, one train iteration, update memory.

GPU time comes in short slices, so every part runs in one process, in order, and writes its JSON
as soon as it ends (a part that fails records its traceback and the next one still runs):

- **setup**: SD3.5-Medium's transformer and SD3's VAE with random weights (bench/branch.py's
  `sd35m_random_policy`: 24 MMDiT blocks, 13 with dual attention, width 1536; one-layer text
  encoders of SD3's output widths), built on the device and saved with `save_pretrained`, so the
  train flow loads it through the same `from_pretrained` path as a downloaded SD3.5-Medium.
- **branch**: bench/branch.py's comparison at `T = 10` for `--ns` trajectories: the branch stage's
  completions against their floor (plain batched forwards of the best size) and against the naive
  approach (one completion per branch point over the batch; at n = 8 also one per branch point and
  trajectory). `branch_<model>_<device>.json`, top-level `naive_speedup` and `floor_ratio`.
- **iteration**: one iteration of the real train flow (Prefect, Parquet, manifests, checkpoint)
  on that pipeline with `configs/sd35m_geneval.yaml`'s settings, the `jpeg` reward, `G = 8` and 2
  prompts: seconds, peak device memory and model evaluations per stage, the model load, and the
  48-prompt × `G = 24` reference iteration extrapolated from the per-trajectory costs.
  `iteration_<model>_<device>.json`.
- **memory**: the update's forward + backward (with the KL reference forward, as configured) with
  LoRA rank 32 on the iteration's stored transitions, micro-batches of 1, 2, 4, … transitions, with
  and without `update.gradient_checkpointing`: peak memory and seconds per transition, the
  largest micro-batch that fits. `update_memory_<model>_<device>.json`.

```
python bench/gpu_sd35m.py --device cuda --out-dir "$OUT"                     # on the GPU (~6 min)
python bench/gpu_sd35m.py --device cpu --layers 1 --resolution 128 --ns 2 \\
    --max-batch 4 --micro-batches 1 2 --group-size 2                          # CPU smoke test (~3 min)
```
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench/ modules when run from anywhere
import branch as branch_bench

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
REFERENCE_TRAJECTORIES = 48 * 24  # SPEC §6: 48 prompts × G = 24 per iteration
PROMPTS = ["three red circles", "a blue square left of a green triangle"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gib(n: float) -> float:
    return round(n / 2**30, 3)


@contextlib.contextmanager
def device_window(device: str, record: dict[str, Any]) -> Iterator[None]:
    """Wall seconds and, on CUDA, peak allocated / reserved GiB of the block into `record`."""
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        record["start_allocated_gib"] = gib(torch.cuda.memory_allocated())
    started = time.perf_counter()
    try:
        yield
    finally:
        sync(device)
        record["seconds"] = round(time.perf_counter() - started, 3)
        if device.startswith("cuda"):
            record["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
            record["peak_reserved_gib"] = gib(torch.cuda.max_memory_reserved())


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write(out_dir: Path, name: str, data: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_text(json.dumps(data, indent=1, default=str))
    print(f"-> {out_dir / name}", flush=True)


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    env: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, device_memory_gib=gib(props.total_memory))
    return env


# --- the train flow's config at SD3.5-M size ---------------------------------------------------


def iteration_config(args: argparse.Namespace, model_dir: Path, work: Path) -> Any:
    """configs/sd35m_geneval.yaml with the saved random pipeline, the jpeg reward, G and 2 prompts."""
    import yaml

    from tpgrpo.config import load_config_data

    data = yaml.safe_load((ROOT / "configs" / "sd35m_geneval.yaml").read_text())
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    data["name"] = "gpu-sd35m"
    data["iterations"] = 1
    data["model"].update(
        path=str(model_dir),
        device=args.device,
        dtype=args.dtype,
        height=args.resolution,
        width=args.resolution,
        max_sequence_length=args.max_sequence_length,
    )
    data["rollout"].update(
        prompts=str(prompts),
        prompts_per_batch=len(PROMPTS),
        batches_per_iteration=1,
        group_size=args.group_size,
    )
    data["branch"]["chunk_size"] = args.chunk_size
    data["reward"]["spec"] = "jpeg"  # needs no reward server; random-weight images vary in compressibility
    data["storage"] = {"root": str(work / "runs"), "keep_latents": 2}
    return load_config_data(data)


# --- parts -------------------------------------------------------------------------------------


def policy_for(args: argparse.Namespace, model_dir: Path, work: Path) -> Any:
    """The train flow's policy (saved pipeline + LoRA rank 32, loaded once per process), in eval mode."""
    from tpgrpo.pipeline import steps

    policy = steps.RunContext.create(iteration_config(args, model_dir, work), "gpu-sd35m").policy()
    policy.transformer.eval()
    return policy


def part_branch(
    args: argparse.Namespace, policy: Any, deadline: float, out: dict[str, Any]
) -> dict[str, Any]:
    from tpgrpo.config import load_config_data

    section = {
        "path": "embedded:tiny",  # not loaded: the policy is built in memory
        "height": args.resolution,
        "width": args.resolution,
        "device": args.device,
        "dtype": args.dtype,
    }

    def config(t_steps: int, **branch: Any) -> Any:
        return load_config_data({"model": section, "sampling": {"num_steps": t_steps}, "branch": branch})

    result = branch_bench.measure(
        policy,
        config,
        steps_list=[10],
        ns=args.ns,
        repeats=args.repeats,
        max_batch=args.max_batch,
        count_without_reuse=not args.device.startswith("cuda"),
        repeats_by_n={n: 1 for n in args.ns if n > 8},
        per_branch=(min(args.ns),),
        deadline=deadline,
        sink=out,
    )
    return result


def _wrap(record: dict[str, Any], name: str, device: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*a: Any, **kw: Any) -> Any:
        entry: dict[str, Any] = {}
        with device_window(device, entry):
            out = fn(*a, **kw)
        prev = record.get(name)
        if prev is None:
            record[name] = entry
        else:  # several shards: seconds add up, the peak is the largest
            prev["seconds"] = round(prev["seconds"] + entry["seconds"], 3)
            for k in ("peak_allocated_gib", "peak_reserved_gib"):
                if k in entry:
                    prev[k] = max(prev[k], entry[k])
        return out

    return wrapped


def measured_chunks(cfg: Any, policy: Any) -> dict[str, int]:
    """The rollout and branch stages' best batches for this config (cached for the flow's stages)."""
    from tpgrpo.stages.batching import best_batch
    from tpgrpo.stages.common import make_grid

    n = cfg.rollout.trajectories
    shape = policy.latent_shape(cfg.model.height, cfg.model.width)
    cond, uncond = policy.encode([PROMPTS[0]]), policy.encode([""])
    g, configured = cfg.sampling.guidance_scale, cfg.branch.chunk_size
    branches = n * make_grid(cfg, policy).window.size  # completions started in the window
    return {
        "rollout_chunk": best_batch(policy, shape, cond, uncond, g, configured, limit=n),
        "branch_chunk": best_batch(policy, shape, cond, uncond, g, configured, limit=branches),
    }


def part_iteration(args: argparse.Namespace, model_dir: Path, work: Path, out: dict[str, Any]) -> None:
    """One iteration of the train flow; per-stage seconds / memory from wrappers around the steps.

    Fills `out` as it goes, so a failure late in the part still leaves what was measured.
    """
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline import steps
    from tpgrpo.stages.common import make_grid
    from tpgrpo.storage import read_manifest, read_table

    cfg = iteration_config(args, model_dir, work)
    run_id = "gpu-sd35m"
    ctx = steps.RunContext.create(cfg, run_id)
    load: dict[str, Any] = {}
    out["model_load"] = load
    with device_window(args.device, load):
        ctx.policy()  # from_pretrained + LoRA rank 32 (cached for the flow's tasks in this process)
    print(f"model load: {load}", flush=True)
    # the best batch is measured once per process (branch.chunk_size: null): measure it here, apart
    # from the stages, since a long run pays it once, not per iteration
    chunk: dict[str, Any] = {}
    out["chunk_measurement"] = chunk
    with device_window(args.device, chunk):
        chunk.update(measured_chunks(cfg, ctx.policy()))
    print(f"chunk measurement: {chunk}", flush=True)
    stages: dict[str, Any] = {}
    flow: dict[str, Any] = {}
    out.update(stages=stages, flow=flow)
    for name in ("rollout", "branch", "score"):
        steps.SHARD_FUNCS[name] = _wrap(stages, name, args.device, steps.SHARD_FUNCS[name])
    steps.annotate_step = _wrap(stages, "annotate", args.device, steps.annotate_step)  # type: ignore[assignment]
    steps.update_step = _wrap(stages, "update", args.device, steps.update_step)  # type: ignore[assignment]
    with device_window(args.device, flow):
        train(cfg, run_id=run_id, iterations=1)
    layout = ctx.layout
    key = ctx.reward_key()
    uris = {
        "rollout": layout.rollouts(0),
        "branch": layout.branches(0),
        "score": layout.rewards(0, key),
        "annotate": layout.annotations(0, key, cfg.reward.mode),
        "update": layout.updates(0),
    }
    for name, uri in uris.items():
        m = read_manifest(uri)
        stages.setdefault(name, {}).update(
            rows=m.rows, model_evals=m.model_evals, compute_s=m.timings.get("compute_s"), metrics=m.metrics
        )
    updates = read_table(layout.updates(0), "updates").to_pylist()
    grid = make_grid(cfg, ctx.policy())
    n = len(PROMPTS) * args.group_size
    scale = REFERENCE_TRAJECTORIES / n
    model_s = sum(stages[s]["seconds"] for s in ("rollout", "branch", "score", "update"))
    out.update(
        config={
            "trajectories": n,
            "prompts": len(PROMPTS),
            "group_size": args.group_size,
            "num_steps": cfg.sampling.num_steps,
            "window": [grid.window.start, grid.window.size],
            "resolution": args.resolution,
            "dtype": args.dtype,
            "lora_rank": cfg.update.lora_rank,
            "micro_batch": cfg.update.micro_batch,
            "optimizer_steps": cfg.update.optimizer_steps,
            "kl_beta": cfg.update.kl_beta,
            "reward": "jpeg",
        },
        updates=updates,
        seconds_per_trajectory={s: stages[s]["seconds"] / n for s in stages},
        extrapolated_reference_iteration_s={
            "trajectories": REFERENCE_TRAJECTORIES,
            **{s: round(stages[s]["seconds"] * scale, 1) for s in stages},
            "total": round(model_s * scale + stages["annotate"]["seconds"], 1),
        },
        run_dir=layout.run_dir,
    )


def part_memory(args: argparse.Namespace, model_dir: Path, work: Path, out: dict[str, Any]) -> None:
    """The update's micro-batch sweep on the iteration's stored transitions (fills `out` as it goes)."""
    from tpgrpo.models.lora import lora_parameters
    from tpgrpo.pipeline import steps
    from tpgrpo.stages import update
    from tpgrpo.stages.common import encode_prompts

    cfg = iteration_config(args, model_dir, work)
    ctx = steps.RunContext.create(cfg, "gpu-sd35m")
    policy = policy_for(args, model_dir, work)
    layout = ctx.layout
    data = update.load_update_data(
        layout.rollouts(0), layout.annotations(0, ctx.reward_key(), cfg.reward.mode)
    )
    transitions = [(r, j) for r in range(len(data.trajectory_ids)) for j in range(data.window_size)]
    cond = encode_prompts(policy, data.prompts)
    uncond = encode_prompts(policy, [""] * len(data.prompts))
    params = list(lora_parameters(policy.transformer).values())
    rows: list[dict[str, Any]] = []
    largest: dict[str, int | None] = {}
    out.update(
        lora_rank=cfg.update.lora_rank,
        kl_beta=cfg.update.kl_beta,
        samples_per_transition=2 if cfg.sampling.guidance_scale > 1.0 else 1,
        rows=rows,
        largest_micro_batch_that_fits=largest,
        tried_up_to=max(args.micro_batches),
    )
    for checkpointing in (False, True):
        update.set_gradient_checkpointing(policy.transformer, checkpointing)
        policy.transformer.train()
        largest[str(checkpointing)] = None
        for m in args.micro_batches:
            if m > len(transitions):
                break
            batch = transitions[:m]
            entry: dict[str, Any] = {"gradient_checkpointing": checkpointing, "micro_batch": m}
            oom = False
            try:
                for p in params:
                    p.grad = None
                out = update.transition_loss(policy, cfg, data, batch, cond, uncond)  # warm-up
                out.loss.backward()
                del out
                for p in params:
                    p.grad = None
                with device_window(args.device, entry):
                    out = update.transition_loss(policy, cfg, data, batch, cond, uncond)
                    out.loss.backward()
                    del out
            except torch.OutOfMemoryError:
                oom = True
            for p in params:
                p.grad = None
            release()
            if oom:
                entry["oom"] = True
                rows.append(entry)
                print(f"  checkpointing={checkpointing} micro_batch={m}: out of memory", flush=True)
                break
            entry["seconds_per_transition"] = round(entry["seconds"] / m, 4)
            rows.append(entry)
            largest[str(checkpointing)] = m
            print(f"  {entry}", flush=True)
    policy.transformer.eval()
    update.set_gradient_checkpointing(policy.transformer, False)


def _terminated(signum: int, frame: Any) -> None:
    raise TimeoutError(f"terminated by signal {signum}")


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (24 = SD3.5-M)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens (SD3.5: 256)")
    ap.add_argument("--parts", nargs="*", default=["iteration", "memory", "branch"])
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="no part (or branch row) starts after this many seconds"
    )
    ap.add_argument("--ns", type=int, nargs="*", default=[8, 32], help="branch: trajectories per batch")
    ap.add_argument("--max-batch", type=int, default=64, help="branch: largest batch of the sweep")
    ap.add_argument("--repeats", type=int, default=2, help="branch: timed repeats (1 beyond n = 8)")
    ap.add_argument("--group-size", type=int, default=8, help="iteration: G")
    ap.add_argument(
        "--chunk-size", type=int, default=None, help="iteration: branch.chunk_size (default: measured)"
    )
    ap.add_argument("--micro-batches", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=None, help="model and run directory (default: a temp dir)")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    suffix = f"sd35m-random_{args.device.split(':')[0]}" + (
        "" if args.layers == 24 else f"_{args.layers}layers"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="tpgrpo-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    torch.backends.cuda.matmul.allow_tf32 = True

    signal.signal(signal.SIGTERM, _terminated)  # `timeout` ends a part as an error: its JSON is written
    env = environment(args.device)
    print(env, flush=True)
    started_all = time.perf_counter()
    summary: dict[str, Any] = {"environment": env, "args": vars(args), "parts": {}}
    model_dir = work / "sd35m-random"
    setup: dict[str, Any] = {}
    with device_window(args.device, setup):
        built = branch_bench.sd35m_random_policy(args.device, args.dtype, args.layers)
    setup.update(transformer_params=sum(p.numel() for p in built.transformer.parameters()))
    saved: dict[str, Any] = {}
    with device_window(args.device, saved):
        built.pipeline.save_pretrained(model_dir, safe_serialization=True)
    setup["save_pretrained"] = saved
    del built  # every part loads the saved pipeline through the train flow's path
    release()
    summary["setup"] = setup
    print(f"setup: {setup}", flush=True)

    for part in args.parts:
        started = time.perf_counter()
        if started - started_all > args.budget_s:
            summary["parts"][part] = {"ok": False, "skipped": f"over the {args.budget_s} s budget"}
            continue
        names = {"iteration": "iteration", "memory": "update_memory", "branch": "branch"}
        out: dict[str, Any] = {"environment": env}
        try:
            if part == "iteration":
                part_iteration(args, model_dir, work, out)
            elif part == "memory":
                part_memory(args, model_dir, work, out)
            elif part == "branch":
                deadline = started_all + args.budget_s
                out.update(part_branch(args, policy_for(args, model_dir, work), deadline, out))
                out.update(model=f"sd35m-random ({args.layers} layers)", dtype=args.dtype, lora_rank=32)
                out.update(resolution=args.resolution, device=args.device)
            else:
                raise ValueError(f"unknown part {part!r}; choose from {sorted(names)}")
            summary["parts"][part] = {"ok": True, "seconds": round(time.perf_counter() - started, 1)}
        except Exception:
            out["error"] = traceback.format_exc()
            summary["parts"][part] = {
                "ok": False,
                "seconds": round(time.perf_counter() - started, 1),
                "error": out["error"],
            }
            traceback.print_exc()
            release()
        if part in names:
            write(args.out_dir, f"{names[part]}_{suffix}.json", out)
        print(f"part {part}: {summary['parts'][part]['seconds']} s", flush=True)
        write(args.out_dir, f"gpu_summary_{suffix}.json", summary)


if __name__ == "__main__":
    main()
