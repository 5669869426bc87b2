"""`tpgrpo audit verify`: every stored dataset and checkpoint of a run, checked in full.

What is checked, for every finished dataset (prompts; per iteration rollouts, branches, every
rewards/<key>, every annotations/<key>/<mode>, updates; every eval/<checkpoint>/<key>):

- the manifest parses, names the schema its location expects, and its recorded `hash` is the
  hash of its own content (schema, rows, parts, inputs, config hash) — a hand-edited manifest fails;
- every part file: present, of the recorded size and SHA-256, with the declared Arrow schema and
  the recorded row count; no stray Parquet file (`verify_dataset`);
- row counts between stages: rollouts = groups × G, branches = rewards = rollouts × (W + 1),
  annotations = rollouts × W, updates ≤ optimizer steps × epochs;
- lineage: the manifest's recorded inputs are exactly the expected ones and each equals the
  current hash of that input (rollouts K ← prompts, checkpoint K; branches ← rollouts; rewards ←
  branches; annotations ← rewards, rollouts; updates K and checkpoint K+1 ← rollouts K, the run's
  annotations K, checkpoint K; eval ← its checkpoint);
- config hashes of the stages the run's config determines;
- for every checkpoint: complete (`_CHECKPOINT.json`), every file's size and SHA-256, the
  recorded hash, its iteration, and its lineage as above.

Unfinished directories (debris of an interrupted stage) are faults too — unless a live process
holds the run's lock: then the run is being trained (or rescored), its unfinished outputs are
work in progress, listed as such and not checked, and only what is finished is verified. Every
fault is collected; nothing stops at the first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tpgrpo.config import config_data_hash
from tpgrpo.errors import DataError
from tpgrpo.pipeline.lineage import annotate_config_hash, input_uris, score_config_hashes, stage_config_hash
from tpgrpo.stages.annotate import stored_reward_keys
from tpgrpo.storage import Manifest, verify_dataset
from tpgrpo.storage.blobs import BLOB_MANIFEST, read_blobs
from tpgrpo.storage.files import read_bytes
from tpgrpo.storage.manifest import content_hash
from tpgrpo.storage.uri import filesystem_for

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

Log = Callable[[str], None]


@dataclass
class VerifyReport:
    """What `verify_run` checked, every fault it found, and (on a run being trained) what it left
    for later: the unfinished outputs the training is writing."""

    checked: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    holder: dict[str, Any] | None = None  # the live lease's owner when the run is being trained

    @property
    def ok(self) -> bool:
        return not self.faults


@dataclass
class _Verifier:
    ctx: RunContext
    reward_key: str
    report: VerifyReport = field(default_factory=VerifyReport)
    log: Log | None = None
    _hashes: dict[str, str | None] = field(default_factory=dict)  # uri -> verified manifest hash

    # --- helpers --------------------------------------------------------------------------------

    def rel(self, uri: str) -> str:
        prefix = self.ctx.layout.run_dir.rstrip("/") + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else uri

    def fault(self, uri: str, problem: str) -> None:
        self.report.faults.append(f"{self.rel(uri)}: {problem}")

    @property
    def live(self) -> bool:
        """Whether a live process holds the run's lock (it is being trained or rescored now)."""
        return self.report.holder is not None

    def unfinished(self, uri: str, problem: str) -> None:
        """An unfinished output: in progress on a live run, else debris of an interrupted stage."""
        if self.live:
            self.report.in_progress.append(self.rel(uri))
        else:
            self.fault(uri, problem)

    def status(self, uri: str) -> str:
        from tpgrpo.pipeline.catalog import dataset_status

        return dataset_status(uri, self.ctx.storage_options)

    def dataset(
        self,
        uri: str,
        schema: str,
        expected_inputs: dict[str, str],
        config_hash: str | tuple[str, ...] | None = None,
        rows: int | None = None,
        max_rows: int | None = None,
    ) -> Manifest | None:
        """Verify one dataset (if it exists); returns its manifest when it passed its own checks."""
        state = self.status(uri)
        if state == "missing":
            self._hashes[uri] = None
            return None
        if state == "debris":
            self.unfinished(
                uri, "unfinished (files but no _MANIFEST.json): its stage was interrupted; rerun it"
            )
            self._hashes[uri] = None
            return None
        try:
            manifest = verify_dataset(uri, storage_options=self.ctx.storage_options)
        except DataError as err:
            self.fault(uri, str(err).removeprefix(uri).lstrip(": "))
            self._hashes[uri] = None
            return None
        n_before = len(self.report.faults)
        if manifest.schema.name != schema:
            self.fault(uri, f"holds a {manifest.schema} dataset where a {schema!r} dataset belongs")
        if manifest.retention is None:
            recomputed = content_hash(
                manifest.schema, manifest.rows, manifest.parts, manifest.inputs, manifest.config_hash
            )
            if recomputed != manifest.hash:
                self.fault(uri, "manifest hash does not match its content: the manifest was edited")
        self.lineage(uri, manifest.inputs, expected_inputs)
        accepted = (config_hash,) if isinstance(config_hash, str) else config_hash
        if accepted is not None and manifest.config_hash not in accepted:
            self.fault(
                uri,
                "config hash differs from the run config's: built with other settings, or the config "
                f"schema changed since (written by {manifest.code_version})",
            )
        if rows is not None and manifest.rows != rows:
            self.fault(uri, f"{manifest.rows} rows, expected {rows} from the run config and its inputs")
        if max_rows is not None and manifest.rows > max_rows:
            self.fault(uri, f"{manifest.rows} rows, at most {max_rows} expected")
        self._hashes[uri] = manifest.hash
        if len(self.report.faults) == n_before:
            self.report.checked.append(f"{self.rel(uri)} ({manifest.rows} rows)")
        return manifest

    def lineage(self, uri: str, recorded: dict[str, str], expected: dict[str, str]) -> None:
        """Recorded inputs must be exactly `expected` (name -> input URI) at their current hashes."""
        for name in sorted(set(recorded) - set(expected)):
            self.fault(uri, f"records an unexpected input {name!r}")
        for name, input_uri in expected.items():
            if name not in recorded:
                self.fault(uri, f"records no input {name!r} (expected {self.rel(input_uri)})")
                continue
            current = self.current_hash(input_uri)
            if current is None and self.live and self.status(input_uri) != "done":
                # its input was still being written when checked (the run is being trained)
                self.report.in_progress.append(f"{self.rel(uri)} (input {self.rel(input_uri)} being written)")
            elif current is None:
                self.fault(uri, f"input {name!r} ({self.rel(input_uri)}) is missing, unfinished or corrupt")
            elif current != recorded[name]:
                self.fault(
                    uri,
                    f"input {name!r} recorded hash {recorded[name][:12]}… but {self.rel(input_uri)} "
                    f"is now {current[:12]}…: the input was rebuilt after this dataset (rerun this stage "
                    "with --force) or the manifest was edited",
                )

    def current_hash(self, uri: str) -> str | None:
        if uri not in self._hashes:
            raise RuntimeError(f"verify order: {uri} used before it was verified")
        return self._hashes[uri]

    # --- checkpoints --------------------------------------------------------------------------------

    def checkpoint(self, k: int, expected_inputs: dict[str, str], config_hash: str) -> None:
        uri = self.ctx.layout.checkpoint(k)
        state = self.status(uri)
        self._hashes[uri] = None
        if state == "missing":
            return
        if state == "debris":
            self.unfinished(
                uri, f"unfinished checkpoint (no {BLOB_MANIFEST}): an update was interrupted; rerun it"
            )
            return
        try:
            manifest, _ = read_blobs(uri, self.ctx.storage_options)
        except DataError as err:
            self.fault(uri, str(err).removeprefix(uri).lstrip(": "))
            return
        n_before = len(self.report.faults)
        fs, path = filesystem_for(uri, self.ctx.storage_options)
        stored = json.loads(read_bytes(fs, f"{path}/{BLOB_MANIFEST}")).get("hash")
        if stored != manifest.hash:
            self.fault(uri, f"{BLOB_MANIFEST} hash does not match its content: the manifest was edited")
        if manifest.meta.get("iteration") != k:
            self.fault(uri, f"records iteration {manifest.meta.get('iteration')!r}, expected {k}")
        if manifest.config_hash != config_hash:
            self.fault(
                uri,
                "config hash differs from the run config's: trained with other settings, or the config "
                f"schema changed since (written by {manifest.code_version})",
            )
        self.lineage(uri, manifest.inputs, expected_inputs)
        self._hashes[uri] = manifest.hash
        if len(self.report.faults) == n_before:
            self.report.checked.append(f"{self.rel(uri)} ({len(manifest.files)} files)")

    # --- the run ------------------------------------------------------------------------------------

    def run(self) -> VerifyReport:
        layout, cfg = self.ctx.layout, self.ctx.cfg
        self.run_json()
        self.dataset(layout.prompts(), "prompts", {}, stage_config_hash(cfg, "prompts"))
        if self._hashes[layout.prompts()] is None and self.status(layout.prompts()) == "missing":
            self.fault(layout.prompts(), "missing: the run was never initialised (tpgrpo train creates it)")
        update_hash = stage_config_hash(cfg, "update")
        self.checkpoint(0, {}, update_hash)
        if self.status(layout.checkpoint(0)) == "missing":
            self.fault(layout.checkpoint(0), "missing: every run starts from checkpoint 0")
        n = cfg.rollout.trajectories
        iterations = layout.list_iterations()
        for i in range(max(iterations) + 1 if iterations else 0):
            if self.log:
                self.log(f"verifying iteration {i}")
            rollouts, branches = layout.rollouts(i), layout.branches(i)
            if i not in iterations:
                self.fault(layout.iteration_dir(i), f"missing, but iteration {max(iterations)} exists")
            self.dataset(
                rollouts,
                "rollouts",
                input_uris(layout, "rollout", i),
                stage_config_hash(cfg, "rollout"),
                rows=n,
            )
            if i in iterations and self.status(rollouts) == "missing" and not self.live:
                self.fault(rollouts, "missing although the iteration directory exists")
            w = self.window_size(rollouts)
            # one image per window boundary, or the final image alone without completions
            boundaries = (w + 1 if cfg.branch.completions else 1) if w is not None else None
            self.dataset(
                branches,
                "branches",
                input_uris(layout, "branch", i),
                stage_config_hash(cfg, "branch"),
                rows=n * boundaries if boundaries is not None else None,
            )
            for key in layout.list_rewards(i):
                spec_hash = score_config_hashes(cfg.reward.spec) if key == self.reward_key else None
                self.dataset(
                    layout.rewards(i, key),
                    "rewards",
                    input_uris(layout, "score", i, key),
                    spec_hash,
                    rows=n * boundaries if boundaries is not None else None,
                )
                combined = stored_reward_keys(cfg.advantage)  # rewards advantage.weights combines
                for mode in layout.list_annotations(i, key):
                    self.dataset(
                        layout.annotations(i, key, mode),
                        "annotations",
                        input_uris(layout, "annotate", i, key, mode, combined),
                        annotate_config_hash(cfg, mode),
                        rows=n * w if w is not None else None,
                    )
            # the update reads the run's own annotations; checkpoint i + 1 records the same inputs
            update_inputs = input_uris(layout, "update", i, self.reward_key, cfg.reward.mode)
            for uri in update_inputs.values():
                self._hashes.setdefault(uri, None)  # not verified above: missing for the lineage check
            self.dataset(
                layout.updates(i),
                "updates",
                update_inputs,
                update_hash,
                max_rows=cfg.update.optimizer_steps * cfg.update.epochs,
            )
            self.checkpoint(i + 1, update_inputs, update_hash)
            if (
                not self.live  # the update writes its dataset, then the checkpoint
                and self.status(layout.updates(i)) == "done"
                and self.status(layout.checkpoint(i + 1)) == "missing"
            ):
                self.fault(layout.checkpoint(i + 1), f"missing although iteration {i}'s updates are finished")
        self.evals()
        return self.report

    def window_size(self, rollouts: str) -> int | None:
        """`W` of an iteration, as its verified rollouts record it (the config's explicit `W` when the
        rollouts are missing or faulty; None, no row-count checks downstream, if neither is known).

        A `window_size: null` run's `W` follows the rule of the code that sampled it (`T − 1` before
        SPEC §2's floor, the floor window since), so only the rollouts can tell it."""
        from tpgrpo.pipeline.catalog import rollout_window

        if self._hashes.get(rollouts) is not None:
            try:
                window = rollout_window(rollouts, self.ctx.storage_options)
            except DataError:  # already a fault of the rollouts (e.g. an edited manifest)
                window = None
            if window is not None:
                return window[1]
        return self.ctx.cfg.sampling.window_size

    def run_json(self) -> None:
        from tpgrpo.storage import read_run_record

        layout = self.ctx.layout
        try:
            stored = read_run_record(layout)
        except DataError as err:
            self.fault(layout.run_json(), str(err))
            return
        if stored is None:
            self.fault(layout.run_json(), "missing: the run was never initialised")
            return
        # Config.hash() of the config as stored (this code's defaults may add keys since; see `dataset`)
        as_stored = config_data_hash(stored.get("config"))
        if stored.get("config_hash") not in (as_stored, self.ctx.cfg.hash()):
            self.fault(layout.run_json(), "config_hash does not match the stored config: run.json was edited")
        else:
            self.report.checked.append("run.json")

    def evals(self) -> None:
        import re

        layout = self.ctx.layout
        for name, key in layout.list_evals():
            uri = layout.eval(name, key)
            match = re.fullmatch(r"iter=(\d{4,})(?:\.steps=\d+)?", name)
            expected: dict[str, str] = {}
            if match:
                expected = input_uris(layout, "evaluate", int(match.group(1)))
                for ckpt in expected.values():
                    self._hashes.setdefault(ckpt, None)
            self.dataset(uri, "eval", expected)


def verify_run(ctx: RunContext, *, reward_key: str | None = None, log: Log | None = None) -> VerifyReport:
    """Check everything stored for a run (see the module docstring); collects every fault.

    Args:
        ctx: the run's `RunContext`.
        reward_key (`str`, *optional*): the key of the run's own reward (found from the manifests
            by default).
        log (`Callable[[str], None]`, *optional*): progress messages.
    """
    from tpgrpo.pipeline.catalog import config_reward_key
    from tpgrpo.storage.lock import lease_holder

    key = reward_key or config_reward_key(ctx)
    verifier = _Verifier(ctx, key, log=log)
    verifier.report.holder = lease_holder(ctx.layout.lock(), ctx.storage_options)
    return verifier.run()
