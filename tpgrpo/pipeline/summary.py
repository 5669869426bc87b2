"""A config in a few lines of text, the same in `config validate`, `runs show` and `report`."""

from __future__ import annotations

import json

from tpgrpo.config import Config


def config_summary(cfg: Config, window: str, reward_key: str | None = None) -> dict[str, str]:
    """Section -> one line: model, sampling, rollout, reward, update.

    Args:
        cfg (`Config`): the config.
        window (`str`): the SDE window in words (`describe_window` for a config, `format_windows` for
            a stored run's rollouts).
        reward_key (`str`, *optional*): the storage key of the run's reward, when known.
    """
    m, s, r, u = cfg.model, cfg.sampling, cfg.rollout, cfg.update
    key = f" (key {reward_key})" if reward_key else ""
    return {
        "model": f"{m.family} {m.path} ({m.dtype}, {m.device}), {m.height}x{m.width}",
        "sampling": f"T={s.num_steps}, window {window}, {s.sampler} a={s.noise_level}, "
        f"cfg {s.guidance_scale}, eval steps {s.eval_steps}",
        "rollout": f"{r.groups} prompt groups x G={r.group_size} per iteration (prompts {r.prompts}), "
        f"{r.shards} shard(s)",
        "reward": f"{json.dumps(cfg.reward.spec)}{key}, mode {cfg.reward.mode}, "
        f"initial_step {cfg.reward.initial_step}, balance {cfg.reward.balance}",
        "update": f"lr {u.lr:g}, LoRA rank {u.lora_rank}, {u.optimizer_steps} optimizer steps x {u.epochs} "
        f"epoch(s), micro-batch {u.micro_batch}, kl_beta {u.kl_beta:g}, ema {u.ema_decay:g}",
    }
