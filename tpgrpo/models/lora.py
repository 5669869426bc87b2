"""LoRA on a policy's transformer through peft (`transformer.add_adapter`), and its safetensors form.

- `add_lora` injects one adapter (named `ADAPTER`) into the transformer's attention projections,
  deterministically under a seed. Default init `"gaussian"` as in Flow-GRPO: A ~ N(0, std 1/r), B = 0,
  so the adapted model starts exactly equal to the base model. Every other weight is frozen; the
  LoRA weights are kept in float32 (an optimizer on bf16 weights loses small updates), and peft
  casts the activations so a bf16 base model still runs.
- `lora_parameters` / `lora_state_dict` / `load_lora_state_dict`: the adapter's weights by name
  (`<module>.lora_A.default.weight`, the names of `transformer.named_parameters()`, so an `EMA`
  over `lora_parameters` saves and loads with the same keys). Loading is strict.
- `adapter_to_bytes` / `read_adapter` / `adapter_from_bytes`: safetensors with a `LoraSpec`
  (family, transformer class, rank, alpha, targets) in the metadata, so an adapter of another
  family, rank, alpha or target set is refused on load with a message naming the difference.
  Never `torch.load`: a checkpoint from shared storage must not be able to run code.
- `reference_mode`: the adapter disabled (the KL reference of SPEC §2 is the base model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from tpgrpo.errors import UserError
from tpgrpo.models.flux import FLUX_LORA_TARGETS
from tpgrpo.models.sd3 import SD3_LORA_TARGETS
from tpgrpo.models.state import save_canonical

ADAPTER = "default"
"""The peft adapter name: a policy carries one adapter."""

FORMAT = "tpgrpo.lora"
FORMAT_VERSION = "1"

# diffusers transformer class name -> family
TRANSFORMER_FAMILIES: dict[str, str] = {
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
}

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {"sd3": SD3_LORA_TARGETS, "flux": FLUX_LORA_TARGETS}


@dataclass(frozen=True)
class LoraSpec:
    """What an adapter is: enough to refuse loading it into the wrong model.

    Args:
        family (`str`): `"sd3"` or `"flux"`.
        transformer (`str`): the diffusers transformer class name.
        rank (`int`): LoRA rank r.
        alpha (`float`): LoRA alpha (the update is scaled by alpha / r).
        targets (`tuple[str, ...]`): peft target-module suffixes, sorted.
    """

    family: str
    transformer: str
    rank: int
    alpha: float
    targets: tuple[str, ...]

    def to_metadata(self) -> dict[str, str]:
        """As safetensors metadata (string values only)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "transformer": self.transformer,
            "rank": json.dumps(self.rank),
            "alpha": json.dumps(self.alpha),
            "targets": json.dumps(list(self.targets)),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str] | None) -> LoraSpec:
        """Parse `to_metadata` output.

        Raises:
            UserError: the metadata is not that of a tpgrpo adapter (or of a newer format).
        """
        if not meta or meta.get("format") != FORMAT:
            raise UserError(
                "not a tpgrpo LoRA adapter (safetensors metadata without format=tpgrpo.lora); "
                "load adapters written by tpgrpo.models.lora.adapter_to_bytes"
            )
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"LoRA adapter format version {meta.get('format_version')!r} is not supported "
                f"(this code reads version {FORMAT_VERSION}); upgrade tpgrpo"
            )
        try:
            return cls(
                family=meta["family"],
                transformer=meta["transformer"],
                rank=int(json.loads(meta["rank"])),
                alpha=float(json.loads(meta["alpha"])),
                targets=tuple(sorted(json.loads(meta["targets"]))),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise UserError(f"LoRA adapter metadata is incomplete or corrupted ({err!r})") from err

    def mismatches(self, other: LoraSpec) -> list[str]:
        """How a checkpoint's spec (`self`) differs from a live adapter's (`other`), one line each."""
        out: list[str] = []
        if self.family != other.family or self.transformer != other.transformer:
            out.append(
                f"checkpoint was trained on a {self.family} transformer ({self.transformer}), "
                f"this policy is a {other.family} transformer ({other.transformer})"
            )
        if self.rank != other.rank:
            out.append(f"checkpoint has LoRA rank {self.rank}, this adapter rank {other.rank}")
        if self.alpha != other.alpha:
            out.append(f"checkpoint has LoRA alpha {self.alpha:g}, this adapter alpha {other.alpha:g}")
        if self.targets != other.targets:
            out.append(f"checkpoint adapts {list(self.targets)}, this adapter {list(other.targets)}")
        return out


def _transformer_of(target: Any) -> Any:
    """The transformer of a policy, or `target` itself when it is a transformer."""
    return target.transformer if hasattr(target, "transformer") else target


def transformer_family(transformer: Any) -> str:
    """`"sd3"` / `"flux"` from the transformer's class.

    Raises:
        UserError: a transformer class of no supported family.
    """
    name = type(transformer).__name__
    if name not in TRANSFORMER_FAMILIES:
        raise UserError(f"no LoRA support for a {name}; supported: {sorted(TRANSFORMER_FAMILIES)}")
    return TRANSFORMER_FAMILIES[name]


def has_lora(transformer: Any) -> bool:
    """Whether the transformer (or a policy's transformer) carries the policy's adapter."""
    return ADAPTER in (getattr(_transformer_of(transformer), "peft_config", None) or {})


def add_lora(
    target: Any,
    rank: int,
    alpha: float,
    targets: Sequence[str] | None = None,
    seed: int = 0,
    init: str = "gaussian",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Inject a LoRA adapter into a policy's (or a bare) transformer; freeze everything else.

    Args:
        target (`Policy` or transformer): where to add the adapter.
        rank (`int`): LoRA rank r (SPEC §6: 32).
        alpha (`float`): LoRA alpha (SPEC §6: 64); the update is scaled by alpha / r.
        targets (`Sequence[str]`, *optional*): module-name suffixes to adapt; default the policy's
            `lora_targets`, or the family's defaults for a bare transformer.
        seed (`int`): seed of the initialisation (the global RNG state is left untouched).
        init (`str`): peft `init_lora_weights`; `"gaussian"` starts as the identity (B = 0).
        dtype (`torch.dtype`): dtype of the LoRA weights (float32 for training).

    Returns:
        `dict[str, torch.Tensor]`: the trainable LoRA parameters by name (`lora_parameters`).

    Raises:
        UserError: bad rank/alpha, an adapter already present, a target matching no module.
    """
    from peft import LoraConfig

    transformer = _transformer_of(target)
    family = transformer_family(transformer)
    if rank < 1 or alpha <= 0:
        raise UserError(f"LoRA needs rank ≥ 1 and alpha > 0, got rank={rank}, alpha={alpha}")
    if has_lora(transformer):
        raise UserError("the transformer already has a LoRA adapter; load a fresh policy to add another")
    default = getattr(target, "lora_targets", DEFAULT_TARGETS[family])
    chosen = tuple(targets) if targets is not None else tuple(default)
    names = [name for name, _ in transformer.named_modules()]
    unmatched = [t for t in chosen if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise UserError(
            f"LoRA targets {unmatched} match no module of this {type(transformer).__name__}; "
            f"the {family} defaults are {list(DEFAULT_TARGETS[family])}"
        )
    transformer.requires_grad_(False)
    # peft annotates lora_alpha as int, but only uses alpha / r (a float alpha is fine at runtime)
    options: dict[str, Any] = {"lora_alpha": alpha, "init_lora_weights": init}
    config = LoraConfig(r=rank, target_modules=list(chosen), **options)
    with torch.random.fork_rng(devices=[]):  # peft initialises on CPU before moving to the base device
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name=ADAPTER)
    params = lora_parameters(transformer)
    for p in params.values():
        p.data = p.data.to(dtype)
        p.requires_grad_(True)
    return params


def lora_spec(transformer: Any) -> LoraSpec:
    """The `LoraSpec` of the transformer's (or a policy's) adapter.

    Raises:
        UserError: the transformer has no adapter.
    """
    transformer = _transformer_of(transformer)
    if not has_lora(transformer):
        raise UserError("the transformer has no LoRA adapter; call tpgrpo.models.lora.add_lora first")
    config = transformer.peft_config[ADAPTER]
    return LoraSpec(
        family=transformer_family(transformer),
        transformer=type(transformer).__name__,
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        targets=tuple(sorted(config.target_modules)),
    )


def lora_parameters(transformer: Any) -> dict[str, torch.Tensor]:
    """The adapter's parameters by name (`...lora_A.default.weight`, `...lora_B.default.weight`).

    These are the only trainable weights after `add_lora` (inside `reference_mode` they are
    temporarily frozen). Raises `UserError` if the transformer has no adapter.
    """
    transformer = _transformer_of(transformer)
    lora_spec(transformer)  # raises without an adapter
    marks = (f".lora_A.{ADAPTER}.", f".lora_B.{ADAPTER}.")
    return {name: p for name, p in transformer.named_parameters() if any(m in name for m in marks)}


def lora_state_dict(transformer: Any) -> dict[str, torch.Tensor]:
    """A detached CPU copy of `lora_parameters` (same keys, same dtypes)."""
    return {name: p.detach().cpu().clone() for name, p in lora_parameters(transformer).items()}


def _looks_like(keys: Sequence[str]) -> str | None:
    """A family hint from state keys: only FLUX has single-stream blocks."""
    return "flux" if any(k.startswith("single_transformer_blocks.") for k in keys) else None


@torch.no_grad()
def load_lora_state_dict(
    transformer: Any, state: Mapping[str, torch.Tensor], spec: LoraSpec | None = None
) -> None:
    """Copy a LoRA state into the transformer's adapter, strictly.

    Args:
        transformer: a transformer (or policy) with an adapter from `add_lora`.
        state (`Mapping[str, torch.Tensor]`): `lora_state_dict` output (or EMA averages).
        spec (`LoraSpec`, *optional*): the state's spec (from the safetensors metadata); compared
            with the live adapter's first, so the error names the family/rank/alpha/targets.

    Raises:
        UserError: a spec mismatch, missing or unexpected keys, or a shape mismatch.
    """
    transformer = _transformer_of(transformer)
    own_spec = lora_spec(transformer)
    if spec is not None:
        problems = spec.mismatches(own_spec)
        if problems:
            raise UserError("LoRA adapter does not fit this policy: " + "; ".join(problems))
    own = lora_parameters(transformer)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        hint = _looks_like(list(state))
        family = own_spec.family
        why = (
            f"checkpoint was trained on a {hint} transformer, this policy is {family}"
            if hint is not None and hint != family
            else "it belongs to another model or another set of LoRA targets"
        )
        example = (missing or unexpected)[0]
        raise UserError(
            f"LoRA state does not fit this {family} adapter: {len(missing)} missing and {len(unexpected)} "
            f"unexpected keys (e.g. {example!r}); {why}"
        )
    for name, p in own.items():
        value = state[name]
        if value.shape != p.shape:
            if name.endswith(f"lora_A.{ADAPTER}.weight") and value.shape[1:] == p.shape[1:]:
                raise UserError(
                    f"checkpoint has LoRA rank {value.shape[0]}, this adapter rank {p.shape[0]}; "
                    "set update.lora_rank to the checkpoint's rank"
                )
            raise UserError(
                f"LoRA weight {name!r} has shape {tuple(value.shape)} in the checkpoint, {tuple(p.shape)} "
                "here: the checkpoint belongs to another model size"
            )
    for name, p in own.items():
        p.copy_(state[name])


def adapter_to_bytes(transformer: Any, state: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """The adapter as safetensors bytes with its `LoraSpec` in the metadata.

    Args:
        transformer: a transformer (or policy) with an adapter.
        state (`Mapping[str, torch.Tensor]`, *optional*): weights to write instead of the live ones
            (e.g. `EMA.shadow`); must have exactly the adapter's keys and shapes.

    Raises:
        UserError: `state` does not match the adapter.
    """
    transformer = _transformer_of(transformer)
    spec = lora_spec(transformer)
    if state is None:
        tensors = lora_state_dict(transformer)
    else:
        own = lora_parameters(transformer)
        bad = sorted(set(own) ^ set(state)) or [k for k in own if state[k].shape != own[k].shape]
        if bad:
            raise UserError(f"state to save does not match the adapter (differs at {bad[0]!r} …)")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return save_canonical(tensors, metadata=spec.to_metadata())


def read_adapter(blob: bytes) -> tuple[dict[str, torch.Tensor], LoraSpec]:
    """Parse `adapter_to_bytes` output into (state, spec) without a model.

    Raises:
        UserError: not a safetensors tpgrpo adapter.
    """
    try:
        state = load_safetensors(blob)
        meta = _safetensors_metadata(blob)
    except (SafetensorError, ValueError) as err:
        raise UserError(f"LoRA adapter is not a readable safetensors file ({err})") from err
    return state, LoraSpec.from_metadata(meta)


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors byte string (the header is 8-byte length + JSON)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    return dict(header.get("__metadata__") or {})


def adapter_from_bytes(transformer: Any, blob: bytes) -> LoraSpec:
    """Load `adapter_to_bytes` output into the transformer's adapter (strict); returns its spec.

    Raises:
        UserError: unreadable bytes, or an adapter of another family, rank, alpha, targets or size.
    """
    state, spec = read_adapter(blob)
    load_lora_state_dict(transformer, state, spec)
    return spec


def _adapters_disabled(transformer: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(m.disable_adapters for m in transformer.modules() if isinstance(m, BaseTunerLayer))


@contextmanager
def reference_mode(target: Any) -> Iterator[None]:
    """Run the base model: the adapter disabled inside the block, re-enabled on exit (even on error).

    peft's disable/enable also flip `requires_grad` of the LoRA weights; their previous flags are
    restored on exit. Nested use is a no-op.

    Args:
        target (`Policy` or transformer): carries an adapter from `add_lora`.
    """
    transformer = _transformer_of(target)
    params = lora_parameters(transformer)
    if _adapters_disabled(transformer):
        yield
        return
    flags = {name: p.requires_grad for name, p in params.items()}
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()
        for name, p in params.items():
            p.requires_grad_(flags[name])
