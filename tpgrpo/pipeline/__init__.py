"""The pipeline's recipe and catalog, free of Prefect and Typer.

- `root`, `context`: the runs root; a run's config and location (`RunContext`), `load_run`;
- `cache`: the policy and reward models, built once per process;
- `lineage`: which stage reads which dataset, where it writes, its schema and its config hash
  (every stage's hash recipe, speed-only keys), read by the run and by `audit verify`;
- `spec`: `RewardSpec`, a reward spec typed (a name and `{"name": name}` are one spec);
- `plan`: a dataset stage's plan (output, input hashes, config hash) and skip / write / refuse;
- `start` (preflight, init_run), `shards`, `annotate`, `update`, `stale`, `stage`: one iteration's
  steps as plain functions, gathered in `steps` (the flows wrap them in Prefect tasks, `tpgrpo
  stage` calls them directly);
- `evaluate`: a checkpoint's evaluation as plain functions;
- `catalog`: what is stored for a run (manifests, status, windows);
- `select`: `--iters`, `--reward`, `--mode`, `--checkpoint` parsing and the training-data guard;
- `summary`: a config in a few lines (config validate, runs show, report).

Arrows point down only (tests/pipeline/test_layers.py): cli → {report, flows} → pipeline →
stages → {rewards, models, world} → storage → schemas → {config, algorithm}.
"""
