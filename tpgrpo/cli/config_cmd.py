"""`tpgrpo config validate|show`: check a config before any work, or print it resolved."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from tpgrpo.cli.common import ConfigArgument, SetOption, echo, resolve_config

app = typer.Typer(help="Validate or show experiment configs.", no_args_is_help=True)


@app.command("validate")
def validate(
    config: ConfigArgument,
    overrides: SetOption = None,
    other_machine: Annotated[
        bool,
        typer.Option(
            "--other-machine",
            help="Validate for another machine (e.g. a GPU worker): check the reward's name and "
            "parameters only, not this machine's devices or the reward's weights",
        ),
    ] = False,
) -> None:
    """Validate a config: every problem is listed at once; exit code 2 if any.

    Also checks that this machine has `model.device` (e.g. a CUDA GPU) and builds the reward here
    (its weights and device), unless --other-machine."""
    from tpgrpo.config import load_config
    from tpgrpo.errors import ConfigError, RewardError, UserError
    from tpgrpo.pipeline.summary import config_summary
    from tpgrpo.rewards import make_reward, spec_key
    from tpgrpo.stages.common import describe_window, window_check
    from tpgrpo.stages.prompts import check_prompts_for_reward, run_prompts
    from tpgrpo.storage import validate_key

    cfg = load_config(resolve_config(config), overrides or [])
    problems: list[str] = []
    # unknown rewards and bad parameters raise UserError (never loading the reward); the key
    # becomes a folder name
    validate_key(spec_key(cfg.reward.spec))
    if not other_machine:
        from tpgrpo.models.devices import check_model_device

        try:
            check_model_device(cfg)
        except UserError as err:
            problems.append(f"{err} (or validate with --other-machine)")
        try:
            make_reward(cfg.reward.spec)  # as the tasks build it: weights, device, server
        except (UserError, RewardError) as err:
            problems.append(f"reward.spec: {err} (or validate with --other-machine)")
    problems += check_prompts_for_reward(run_prompts(cfg), cfg.reward.spec)
    problems += window_check(cfg)  # SPEC §2's floor on the model's grid, when its directory is here
    if problems:
        raise ConfigError(problems)
    window = describe_window(cfg).removeprefix("window ")  # "[0, 8) (default: …)"
    echo(f"{config}: valid")
    for name, text in config_summary(cfg, window).items():
        echo(f"  {name:<10} {text}")


@app.command("show")
def show(
    config: ConfigArgument,
    overrides: SetOption = None,
) -> None:
    """Print the resolved config (defaults filled in, credentials redacted) as JSON."""
    from tpgrpo.config import load_config

    echo(json.dumps(load_config(resolve_config(config), overrides or []).public_dict(), indent=2))
