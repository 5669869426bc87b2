"""`tpgrpo serve-reward`: host any registered reward model over HTTP (JSON + PNG, never pickle)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def serve_reward(
    spec: Annotated[
        str, typer.Argument(help="Reward name (e.g. shapes) or JSON spec '{\"name\": ..., ...}'")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind; loopback by default")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port)")] = 8765,
    max_request_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest request body accepted (413 beyond)")
    ] = 128.0,
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests scored at the same time")] = 1,
    max_connections: Annotated[int, typer.Option(min=1, help="Open connections before 503")] = 64,
) -> None:
    """Serve a reward at POST /score and GET /health so `{"name": "http", "url": ...}` can use it.

    Binds to 127.0.0.1 unless --host says otherwise; put a TLS-terminating proxy in front of it
    before exposing it beyond a trusted network.
    """
    from tpgrpo.errors import UserError
    from tpgrpo.rewards.server import serve_forever

    parsed: str | dict[str, object] = spec
    if spec.lstrip().startswith("{"):
        try:
            parsed = json.loads(spec)
        except json.JSONDecodeError as err:
            raise UserError(f"reward spec is not valid JSON ({err.msg}): {spec!r}") from None
    serve_forever(
        parsed,
        host=host,
        port=port,
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        max_concurrency=max_concurrency,
        max_connections=max_connections,
    )
