"""The experiment configuration: strict pydantic models loaded from one YAML file.

Unknown keys are errors; `--set a.b=value` overrides are applied before validation; validation
collects **every** problem (pydantic's field errors and the cross-field arithmetic checks of
`problems()`) and raises one `ConfigError` listing them all, before any work starts.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from tpgrpo.errors import ConfigError

EMBEDDED_MODEL = "embedded:tiny"
"""`model.path` value naming the tiny checkpoint shipped inside the package."""

SECRET_KEYS = ("key", "secret", "token", "session_token", "password")
"""Storage option names whose values are credentials: never written anywhere."""


def _not_a_bool(value: Any) -> Any:
    """YAML's `true`/`false` are no numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number; write the number")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
"""An integer; a boolean is refused (`lora_rank: true` is no rank)."""
Float = Annotated[float, BeforeValidator(_not_a_bool), AllowInfNan(False)]
"""A finite number; a boolean is refused. YAML 1.1 reads `1e-4` (no dot) as a string: numeric
strings are accepted as numbers, so `1e400` becomes infinity and is refused here too."""
Bool = StrictBool
"""`true` or `false`; 0/1 and strings are refused."""
Text = Annotated[str, Field(min_length=1)]
"""A non-empty string."""

DEVICE_PATTERN = r"^(cpu|cuda(:[0-9]{1,2})?|mps)$"
"""Devices the model runs on: `cpu`, `cuda`, `cuda:N`, `mps` (whether this machine has it is checked
before any work, by `tpgrpo.models.devices.check_device`)."""

MAX_TRAJECTORIES = 65_536
"""Most trajectories one iteration may sample (prompt groups × G): ~57× the paper's 1152."""

Mode = Literal["flow_grpo", "incremental", "tp", "tp_constrained"]
"""A reward mode: how boundary rewards become step rewards (SPEC §4–5)."""
MODES: tuple[str, ...] = get_args(Mode)
"""Every reward mode, in the order the CLI lists them (`tpgrpo.algorithm.MODES` is this tuple)."""


def config_data_hash(data: Any) -> str:
    """The recipe of `Config.hash` (and `run.json`'s `config_hash`) over plain config data: sha256 of
    its JSON with sorted keys. Stage hashes use another recipe (`tpgrpo.pipeline.lineage`)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    family: Literal["sd3", "flux"] = "sd3"
    path: Text = Field(EMBEDDED_MODEL, description="pipeline directory, hub id, or embedded:tiny")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("cpu", pattern=DEVICE_PATTERN, description="cpu, cuda, cuda:N or mps")
    height: Int = Field(64, gt=0, le=4096)
    width: Int = Field(64, gt=0, le=4096)
    max_sequence_length: Int = Field(14, gt=0, le=512, description="T5 tokens (SD3.5: 256)")
    eval_batch: Int = Field(
        16, gt=0, le=4096, description="samples per forward outside training (the best batch)"
    )


class SamplingConfig(_Strict):
    num_steps: Int = Field(10, ge=2, le=1000, description="T, steps of the training rollouts")
    eval_steps: Int = Field(40, ge=1, le=1000, description="ODE steps of evaluation")
    guidance_scale: Float = Field(4.5, ge=0.0, le=100.0)
    sampler: Literal["sde", "cps", "dance"] = Field(
        "cps", description="cps, sde (Flow-GRPO) or dance (DanceGRPO's SDE step, constant diffusion η)"
    )
    noise_level: Float = Field(0.7, gt=0.0, le=1.0, description="a of SPEC §2 (η for dance)")
    window_start: Int = Field(0, ge=0, le=1000, description="w0, the first trained grid step")
    window_size: Int | None = Field(
        None,
        ge=1,
        le=1000,
        description="W; null: the longest window from w0 whose every step std is at least the floor of "
        "SPEC §2 (0.05), on the model's actual grid (W = 8 on SD3's shift-3 grid at T = 10, cps a = 0.7)",
    )
    exact_cps_logprob: Bool = True


class RolloutConfig(_Strict):
    prompts: Text = Field("train", description="'train'/'test' (embedded sets) or a .jsonl/.txt prompt file")
    tasks: list[Text] | None = Field(
        None,
        min_length=1,
        description="train on the prompts of these tasks only (the `task` column), e.g. [counting, "
        "color_attr]; null: every prompt. Evaluation on the held-out split keeps the same tasks",
    )
    prompts_per_batch: Int = Field(
        4, ge=1, le=4096, description="prompt groups per rollout batch (balancing scope)"
    )
    batches_per_iteration: Int = Field(2, ge=1, le=4096)
    group_size: Int = Field(8, ge=2, le=1024, description="G, trajectories per prompt")
    shards: Int = Field(
        1, ge=1, le=1024, description="GPU stages split over prompt groups into this many shards"
    )
    same_noise_per_group: Bool = Field(
        False,
        description="every trajectory of a prompt group starts from the same initial noise s_0 (that of "
        "the group's first trajectory; DanceGRPO's init_same_noise); the step noise stays per trajectory",
    )

    @property
    def groups(self) -> int:
        """Prompt groups per iteration: `prompts_per_batch × batches_per_iteration`."""
        return self.prompts_per_batch * self.batches_per_iteration

    @property
    def trajectories(self) -> int:
        """Trajectories per iteration: `groups × group_size`."""
        return self.groups * self.group_size

    @model_validator(mode="after")
    def _bounded_iteration(self) -> RolloutConfig:
        n = self.trajectories
        if n > MAX_TRAJECTORIES:
            raise ValueError(
                f"{n} trajectories per iteration (prompts_per_batch × batches_per_iteration × group_size) "
                f"is more than {MAX_TRAJECTORIES}; lower one of them"
            )
        return self


class BranchConfig(_Strict):
    chunk_size: Int | None = Field(
        None, ge=1, le=65_536, description="samples per model call; null: measure once"
    )
    reuse_rollout_velocity: Bool = Field(True, description="first ODE step of each branch from the rollout")
    completions: Bool = Field(
        True,
        description="complete every window state; false: only the final image is scored (flow_grpo only; "
        "the cost of Flow-GRPO, but the run cannot be re-annotated into step-level modes)",
    )
    audit_every: Int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="with completions: false, complete every window state anyway on every K-th iteration "
        "(iterations K−1, 2K−1, …), so those can be re-annotated into step-level modes (`tpgrpo annotate "
        "--mode tp`) to see what TP-GRPO would make of the run; training is unchanged (flow_grpo reads "
        "final rewards only), an audited iteration costs a step-level one; null: never",
    )
    estimator: Text = Field(
        "exact",
        description="how each window state's completion C(s_k) is estimated (docs/operations.md): exact "
        "(every remaining grid step), coarse (branch.coarse_steps Euler steps to σ = 0), x0 (one step from "
        "the rollout's own velocity, no model evaluation), prefix:K (exact for the first K boundaries, "
        "the final reward ρ_W after)",
    )
    coarse_steps: Int | None = Field(
        None, ge=1, le=3, description="Euler steps of a coarse completion (1–3); null: 2. Only with coarse"
    )

    def completes(self, iteration: int) -> bool:
        """Whether the branch stage of `iteration` completes the window states (not only the final
        image): always with `completions`, else on the audited iterations (`audit_every`)."""
        return self.completions or (self.audit_every is not None and (iteration + 1) % self.audit_every == 0)

    @property
    def estimator_label(self) -> str:
        """The estimator as manifests and `runs show` name it: `exact`, `coarse:2`, `x0`, `prefix:3`."""
        if self.estimator == "coarse":
            return f"coarse:{2 if self.coarse_steps is None else self.coarse_steps}"
        return self.estimator

    @field_validator("estimator")
    @classmethod
    def _estimator(cls, value: str) -> str:
        # the grammar of `tpgrpo.algorithm.estimators.parse_estimator`, without importing torch
        name, sep, arg = value.partition(":")
        if name == "prefix":
            if not sep or not arg.isdigit() or int(arg) < 1:
                raise ValueError(
                    f"{value!r}: prefix needs a number of window boundaries K ≥ 1, e.g. prefix:3"
                )
        elif sep or name not in ("exact", "coarse", "x0"):
            raise ValueError(
                f"unknown estimator {value!r}: choose one of exact, coarse, x0, prefix:K (K ≥ 1)"
            )
        return value


SpecData = Text | dict[str, Any]
"""A reward spec as a config or `--reward` holds it: a registered name, or `{name: ..., **params}`."""


class RewardConfig(_Strict):
    spec: SpecData = Field("shapes", description="registered reward name or {name: ..., params}")
    mode: Mode = "tp_constrained"
    initial_step: Bool = True
    balance: Bool = True


class AdvantageConfig(_Strict):
    std_scope: Literal["group", "batch"] = "group"
    clip: Float = Field(5.0, gt=0.0, le=1e6)
    skip_zero: Bool = Field(True, description="skip trajectories whose advantages are all zero")
    aggregate: Literal["reward", "advantage"] = Field(
        "reward",
        description="several rewards (a weighted reward's components, or advantage.weights): reward = "
        "normalise the weighted sum of rewards (Flow-GRPO); advantage = normalise each reward in its "
        "group, then the weighted sum of advantages (DanceGRPO, MixGRPO, GDPO)",
    )
    weights: dict[Text, Float] | None = Field(
        None,
        min_length=1,
        description="{reward key: weight}: combine these stored rewards (rewards/<key> of each "
        "iteration, e.g. written by tpgrpo rescore) instead of the annotated reward alone; null: the "
        "annotated reward (a weighted reward's components with its own weights)",
    )
    best_of_n: Int | None = Field(
        None,
        ge=2,
        le=1024,
        description="train only the n/2 best and n/2 worst trajectories of each group (by final reward, "
        "or aggregated final advantage), the others get advantage 0; even, at most rollout.group_size",
    )


class UpdateConfig(_Strict):
    lr: Float = Field(3e-4, gt=0.0, le=1.0)
    weight_decay: Float = Field(1e-4, ge=0.0, le=10.0)
    clip_range: Float = Field(1e-4, gt=0.0, le=10.0, description="ε of the ratio clip")
    kl_beta: Float = Field(0.0, ge=0.0, le=1e6, description="β of the KL to the adapter-disabled base")
    lora_rank: Int = Field(8, ge=1, le=4096)
    lora_alpha: Float = Field(16.0, gt=0.0, le=1e6)
    grad_clip: Float = Field(1.0, gt=0.0, le=1e6)
    optimizer_steps: Int = Field(
        2, ge=1, le=MAX_TRAJECTORIES, description="optimizer steps per iteration (per epoch)"
    )
    epochs: Int = Field(1, ge=1, le=1000, description="passes over an iteration's samples")
    timestep_fraction: Float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="each trajectory trains floor(W × fraction) of the window's W steps per epoch, a "
        "random subset seeded by (seed, iteration, epoch, trajectory); the loss is the mean over the "
        "trained transitions. 1: every step. DanceGRPO: 0.6",
    )
    micro_batch: Int = Field(32, ge=1, le=65_536, description="transitions per forward/backward")
    gradient_checkpointing: Bool = Field(
        False,
        description="recompute the transformer's activations in the backward pass: less memory per "
        "micro-batch for ~1.3x the update's compute (same gradients)",
    )
    ema_decay: Float = Field(0.9, ge=0.0, lt=1.0)
    ema_every: Int = Field(8, ge=1, le=1_000_000, description="optimizer steps between EMA updates")
    ddp_procs: Int = Field(
        1,
        ge=1,
        le=64,
        description="data-parallel update processes the train flow launches with torchrun on its "
        "machine (gloo on CPU, NCCL with one GPU each on CUDA); 1: the update runs in its task's process",
    )


class S3Config(_Strict):
    endpoint_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+", description="http(s)://host[:port] of the S3 service"
    )
    key: Text | None = Field(None, repr=False)
    secret: Text | None = Field(None, repr=False)
    region: Text | None = None

    @field_serializer("key", "secret", when_used="json")
    def _redact(self, value: str | None) -> str | None:
        """Credentials never leave the process as JSON: not in run.json, nor in the flow parameters
        Prefect stores, nor in logs (`repr` hides them too)."""
        return None if value is None else "<redacted>"


class StorageConfig(_Strict):
    root: Text = "./runs"
    s3: S3Config = S3Config()
    keep_latents: Int | None = Field(
        None, ge=1, le=1_000_000, description="keep latent tensors of the last N iterations only (null: all)"
    )


class FlowConfig(_Strict):
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: Text | None = Field(None, description="scheduler address; null: a local cluster")
    workers: Int = Field(1, ge=1, le=1024)
    io_retries: Int = Field(2, ge=0, le=100)

    @property
    def tasks_run_here(self) -> bool:
        """Whether the flow's tasks (the model work) run on this machine: threads, or a local Dask
        cluster. With a `dask_address` they run on the cluster's workers, which check their own
        device (the flows' `check-worker` task), not the orchestrating machine."""
        return self.task_runner == "threads" or self.dask_address is None


class TrackingConfig(_Strict):
    """Experiment tracking (optional; `pip install 'tpgrpo[tracking]'`). No part of a run's identity:
    turning it on for a stored run resumes it as before."""

    tensorboard: bool = Field(False, description="write TensorBoard event files")
    tensorboard_dir: Text | None = Field(
        None, description="their folder; null: <run>/tensorboard (local runs), ./tensorboard/<run> (S3)"
    )
    mlflow_uri: Text | None = Field(None, description="MLflow tracking URI (http://…, file:…); null: off")
    mlflow_experiment: Text | None = Field(None, description="MLflow experiment; null: the config's name")


class Config(_Strict):
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    seed: Int = Field(0, ge=0, le=2**63 - 1)
    iterations: Int = Field(4, ge=1, le=1_000_000)
    model: ModelConfig = ModelConfig()
    sampling: SamplingConfig = SamplingConfig()
    rollout: RolloutConfig = RolloutConfig()
    branch: BranchConfig = BranchConfig()
    reward: RewardConfig = RewardConfig()
    advantage: AdvantageConfig = AdvantageConfig()
    update: UpdateConfig = UpdateConfig()
    storage: StorageConfig = StorageConfig()
    flow: FlowConfig = FlowConfig()
    tracking: TrackingConfig = TrackingConfig()

    def problems(self) -> list[str]:
        """Cross-field checks pydantic cannot express per field (batch arithmetic, the window)."""
        out: list[str] = []
        w0, w = self.sampling.window_start, self.sampling.window_size
        t = self.sampling.num_steps
        if self.sampling.noise_level == 0:
            out.append(
                "sampling.noise_level=0 makes every step deterministic (an ODE step): there is no "
                "log-prob to train; set it > 0 (0.7 in the reference runs)"
            )
        if w is None and w0 > t - 2:
            out.append(
                f"sampling.window_start={w0} leaves no trainable step (the last step {t - 1} is never "
                f"trained); use window_start ≤ {t - 2}"
            )
        if w is not None and w0 + w > t:
            out.append(f"sampling: window [{w0}, {w0 + w}) runs past the {t} steps of the grid")
        if w is not None and self.sampling.sampler == "cps" and w0 + w > t - 1:
            out.append(
                "sampling: the cps sampler has zero noise at the last step; keep window_start + "
                f"window_size ≤ num_steps − 1 = {t - 1}"
            )
        if self.branch.coarse_steps is not None and self.branch.estimator != "coarse":
            out.append(
                f"branch.coarse_steps is set but branch.estimator is {self.branch.estimator!r}; set "
                "branch.estimator=coarse or remove coarse_steps"
            )
        if self.branch.estimator != "exact" and not self.branch.completions:
            out.append(
                f"branch.estimator={self.branch.estimator} estimates completions, but branch.completions "
                "is false (flow_grpo scores final images only); use branch.estimator=exact"
            )
        prefix = self.branch.estimator.removeprefix("prefix:")
        if self.branch.estimator.startswith("prefix:") and prefix.isdigit():
            # W ≤ T − 1 whatever the window; an explicit window bounds it here, the default one is
            # checked on the model's grid (`stages.common.window_check`) and again by the branch stage
            width = w if w is not None else t - 1
            if int(prefix) > width:
                out.append(
                    f"branch.estimator=prefix:{prefix} needs K ≤ W, the window's {width} boundaries "
                    f"(prefix:{width} is exact); lower K"
                )
        if self.branch.audit_every is not None and self.branch.completions:
            out.append(
                f"branch.audit_every={self.branch.audit_every} audits a run without completions, but "
                "branch.completions is true (every iteration is complete); remove audit_every or set "
                "branch.completions=false"
            )
        if not self.branch.completions and self.reward.mode != "flow_grpo":
            out.append(
                f"branch.completions=false leaves no intermediate rewards for mode {self.reward.mode}; "
                "use reward.mode=flow_grpo or branch.completions=true"
            )
        per_iter = self.rollout.trajectories
        if per_iter % self.update.optimizer_steps:
            out.append(
                f"update.optimizer_steps={self.update.optimizer_steps} does not divide the "
                f"{per_iter} trajectories of an iteration (prompts_per_batch × group_size × batches)"
            )
        groups = self.rollout.groups
        if self.rollout.shards > groups:
            out.append(
                f"rollout.shards={self.rollout.shards} exceeds the {groups} prompt groups of an iteration"
            )
        if self.model.height % 16 or self.model.width % 16:
            out.append(
                f"model: height and width must be multiples of 16, got {self.model.height}×{self.model.width}"
            )
        if self.update.ddp_procs > 1 and self.model.device.startswith("cuda:"):
            out.append(
                f"update.ddp_procs={self.update.ddp_procs} needs model.device 'cuda', not "
                f"{self.model.device!r}: each torchrun process takes the GPU of its local rank"
            )
        weights = self.advantage.weights
        if weights is not None and all(w == 0 for w in weights.values()):
            out.append("advantage.weights are all 0: the combined reward would be constant")
        n = self.advantage.best_of_n
        if n is not None and (n % 2 or n > self.rollout.group_size):
            out.append(
                f"advantage.best_of_n={n} must be even (the n/2 best and n/2 worst of a group) and at most "
                f"rollout.group_size={self.rollout.group_size}"
            )
        if n is not None and not self.advantage.skip_zero:
            out.append(
                "advantage.best_of_n leaves out trajectories by giving them advantage 0, which only "
                "advantage.skip_zero=true keeps out of the update; set it to true"
            )
        if self.flow.task_runner != "dask" and self.flow.dask_address:
            out.append("flow.dask_address is set but flow.task_runner is not 'dask'")
        return out

    def public_dict(self, *, exclude_defaults: bool = False) -> dict[str, Any]:
        """The config as plain data with every credential removed (for run.json and hashes).

        Args:
            exclude_defaults (`bool`): leave out values equal to their defaults (what hashes use).
        """
        data = self.model_dump(mode="json", exclude_defaults=exclude_defaults)
        s3 = data.get("storage", {}).get("s3", {})
        for key in SECRET_KEYS:
            if s3.get(key) is not None:
                s3[key] = "<redacted>"
        return data

    def hash(self) -> str:
        """sha256 of the canonical public config (credentials excluded) over the values that differ
        from their defaults: a release that adds a setting with a default keeps stored runs
        resumable, while any value a run actually set is part of its identity."""
        data = self.public_dict(exclude_defaults=True)
        # credentials are no part of a run's identity (the same run may be resumed with them in the
        # config or in the environment, and `load_run` reads them back as unset)
        storage = data.get("storage", {})
        s3 = storage.get("s3", {})
        for key in SECRET_KEYS:
            s3.pop(key, None)
        if "s3" in storage and not s3:
            del storage["s3"]
        if "storage" in data and not storage:
            del data["storage"]
        data.pop("tracking", None)  # where metrics are sent is no part of what the run computes
        return config_data_hash(data)

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options from `storage.s3` (empty: the standard AWS environment applies)."""
        s3 = self.storage.s3
        opts: dict[str, Any] = {}
        if s3.endpoint_url:
            opts["endpoint_url"] = s3.endpoint_url
        # wrapped: a RunContext travels as Prefect flow parameters, which Prefect stores as JSON
        # (SecretStr serialises as '**********'); tpgrpo.storage.uri unwraps them for s3fs
        if s3.key:
            opts["key"] = SecretStr(s3.key)
        if s3.secret:
            opts["secret"] = SecretStr(s3.secret)
        if s3.region and not s3.endpoint_url:
            opts["client_kwargs"] = {"region_name": s3.region}
        return opts


# --- loading ---------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value parsed as YAML).

    Raises:
        ConfigError: no `=` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError([f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. update.lr=1e-4"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError([f"--set {text!r}: value is not valid YAML ({err})"]) from None
    problems: list[str] = []
    value = plain_data(value, f"--set {key.strip()}", problems)
    if problems:
        raise ConfigError(problems)
    return key.strip().split("."), value


MAX_VALUES = 100_000
"""Most values (scalars and containers) a config may hold once YAML aliases are expanded."""
MAX_DEPTH = 32
"""Most nesting levels of a config."""


def plain_data(value: Any, where: str, problems: list[str]) -> Any:
    """A copy of YAML data as plain JSON data; anything else is appended to `problems`.

    Dates become ISO strings (YAML reads `2024-01-01` as a date); mapping keys must be strings;
    numbers must be finite; bytes, sets and other YAML types are refused. At most `MAX_VALUES`
    values and `MAX_DEPTH` levels: an alias bomb or runaway nesting is refused, never expanded.
    """
    budget = [MAX_VALUES]

    def walk(v: Any, at: str, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise ConfigError(
                [
                    f"{at or '<root>'}: the config is too large or too deeply nested (over {MAX_VALUES} "
                    f"values or {MAX_DEPTH} levels; YAML aliases expanding?)"
                ]
            )
        if isinstance(v, bool | int | str) or v is None:
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                problems.append(f"{at}: {v!r} is not a finite number")
            return v
        if isinstance(v, datetime.date):  # datetime.datetime too
            return v.isoformat()
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                if isinstance(k, str):
                    out[k] = walk(item, f"{at}.{k}" if at else k, depth + 1)
                else:
                    problems.append(f"{at or '<root>'}: key {k!r} is not a string; quote it")
            return out
        if isinstance(v, list):
            return [walk(item, f"{at}[{i}]", depth + 1) for i, item in enumerate(v)]
        problems.append(f"{at or '<root>'}: a {type(v).__name__} is not a config value")
        return None

    return walk(value, where, 0)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `--set` overrides to raw config data (a copy)."""
    out = copy.deepcopy(data)
    problems = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {text!r}: {part!r} is not a section")
                break
            node = child
        else:
            node[path[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def _format_pydantic(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            out.append(f"{where}: unknown key (check the spelling; see configs/tiny.yaml for every key)")
        else:
            out.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return out


def load_config_data(data: Any, overrides: Sequence[str] = ()) -> Config:
    """Validate raw data (+ overrides) into a `Config`, reporting every problem at once."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"the config must be a mapping of sections, got {type(data).__name__}"])
    problems: list[str] = []
    data = plain_data(data, "", problems)  # JSON types only, finite, bounded
    if problems:
        raise ConfigError(problems)
    data = apply_overrides(data, overrides)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_pydantic(err)) from None
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file (+ `--set` overrides).

    Raises:
        ConfigError: missing/unreadable/empty file, invalid YAML, unknown keys, bad values — all listed.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            [
                f"config file {str(p)!r} not found; pass an existing YAML file, or the name of a "
                "shipped config (tiny, tiny_pref, dance_tiny, sd35m_geneval, sd35m_ocr, sd35m_pickscore, "
                "flux_pickscore)"
            ]
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"{p}: not UTF-8 text ({err.reason} at byte {err.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"{p}: invalid YAML: {err}"]) from None
    except RecursionError:
        raise ConfigError([f"{p}: invalid YAML: nested too deeply"]) from None
    if data is None:  # an empty file (or only comments) is a mistake, never "all defaults"
        raise ConfigError(
            [f"{p} is empty; write the experiment's settings into it (start from configs/tiny.yaml)"]
        )
    return load_config_data(data, overrides)
