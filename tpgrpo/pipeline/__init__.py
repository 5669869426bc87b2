"""The pipeline's recipe and catalog, free of Prefect and Typer.

- `context`: a run's config and location (`RunContext`), `load_run`, the runs root;
- `cache`: the policy and reward models, built once per process;
- `hashes`: the config-hash recipe of every stage (one place);
- `lineage`: which stage reads which dataset, where it writes, its schema and config hash;
- `start`, `shards`, `annotate`, `update`, `stale`, `stage`: one iteration's steps as plain
  functions (the flows wrap them in Prefect tasks, `tpgrpo stage` calls them directly);
- `evaluate`: a checkpoint's evaluation as plain functions;
- `catalog`: what is stored for a run (manifests, status, windows);
- `select`: `--iters`, `--reward`, `--mode`, `--checkpoint` parsing.

Arrows point down only: cli → {report, flows} → pipeline → stages → {rewards, models, storage}.
"""
