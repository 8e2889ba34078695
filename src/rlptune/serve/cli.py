"""``rlptune serve``: the subcommand's flags (one per :class:`ServeSettings` field) and its entry point."""

from __future__ import annotations

import threading

import argparse
import sys
import typing

from ..errors import RlptuneError
from .settings import RANGES, ServeSettings, describe_range, parse_number, settings_fields


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rlptune serve`` on the CLI's subparsers (called by :func:`rlptune.cli.build_parser`)."""
    p = subparsers.add_parser(
        "serve",
        help="serve many task adapters on one frozen CLIP over HTTP (batched across tasks; web page at /)",
        description="Serve every adapter folder inside --adapters on one backbone. Loopback only unless --host says otherwise; "
        "PUT/DELETE of adapters need the token.",
    )
    hints = typing.get_type_hints(ServeSettings)
    for field in settings_fields():
        kind = hints[field.name]
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if kind is bool:
            p.add_argument(_flag(field.name), action="store_true", default=field.default, help=field.metadata["help"])
            continue
        base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Union else kind
        if field.name in RANGES:  # checked by ServeSettings.validate, in one line naming the flag
            help_text = f"{field.metadata['help']} ({describe_range(field.name)}; default: {field.default})"
            base = parse_number
        p.add_argument(_flag(field.name), type=base, default=field.default, help=help_text)
    p.set_defaults(func=cmd_serve)
    return p


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    values = {f.name: getattr(args, f.name) for f in settings_fields()}
    return ServeSettings(**values).validate()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    return run_server(settings)


def uvicorn_config(app, settings: ServeSettings, **overrides):
    """The uvicorn configuration ``rlptune serve`` runs with (tests run the same one in-process)."""
    import uvicorn

    options = dict(
        host=settings.host,
        port=settings.port,
        log_level="warning",
        # 0 means: do not wait; requests still running are answered 503 at once (see GuardMiddleware)
        timeout_graceful_shutdown=float(settings.graceful_timeout_s),
        server_header=False,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def run_server(settings: ServeSettings) -> int:
    """Build the app, print how to reach it, run uvicorn until interrupted (or ``max_lifetime_s``), drain, exit."""
    try:
        import uvicorn
    except ImportError:
        raise RlptuneError("rlptune serve needs fastapi and uvicorn: pip install 'rlptune[serve]'") from None
    from .app import create_app

    token, generated = settings.resolve_token()
    app = create_app(settings, token=token)
    server_state = app.state.server
    if not settings.is_loopback:
        print(f"rlptune serve: listening on {settings.host}, reachable from other machines", file=sys.stderr)
    print(
        f"rlptune serve: backbone {server_state.backbone.identity}, {len(server_state.registry)} task(s) from {settings.adapters}"
        + (f", {len(server_state.registry.skipped)} skipped (see log)" if server_state.registry.skipped else ""),
        file=sys.stderr,
    )
    if generated:
        print(f"rlptune serve: token for PUT/DELETE /v1/tasks: {token}", file=sys.stderr)
    server = uvicorn.Server(uvicorn_config(app, settings))
    if settings.max_lifetime_s > 0:
        timer = threading.Timer(settings.max_lifetime_s, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    print(f"rlptune serve: http://{settings.host}:{settings.port}/ (API docs at /docs)", file=sys.stderr, flush=True)
    server.run()
    return 0


__all__ = ["add_serve_parser", "cmd_serve", "run_server", "settings_from_args", "uvicorn_config"]
