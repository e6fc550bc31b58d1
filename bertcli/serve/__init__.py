"""``bertcli serve``: an HTTP inference server (FastAPI on uvicorn) for any bertcli checkpoint.

* :mod:`bertcli.serve.options` - :class:`ServeOptions`, the server's settings;
* :mod:`bertcli.serve.runtime` - the loaded model, its task and live routes, per-request
  preparation (tokenization) and the batch function that calls the library code;
* :mod:`bertcli.serve.batcher` - dynamic batching in one inference thread off the event loop;
* :mod:`bertcli.serve.schemas` - the pydantic request and response bodies (``/docs``);
* :mod:`bertcli.serve.app` - routes, errors, API key, request limits, access logs, metrics;
* :func:`serve` - run it (uvicorn; SIGTERM drains in-flight requests within ``grace`` seconds).

FastAPI and uvicorn come with the ``serve`` extra: ``pip install 'bertcli[serve]'``.
"""

from __future__ import annotations

from bertcli.errors import BertcliError

INSTALL_HINT = "pip install 'bertcli[serve]'"


class MissingExtra(BertcliError):
    """The serve extra (FastAPI, uvicorn, prometheus_client) is not installed."""


def require_extra() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"bertcli serve needs {', '.join(missing)}: run {INSTALL_HINT}")


def serve(options, ready=None) -> int:
    """Run the server in this process until SIGTERM / SIGINT; returns the exit code (0 after a clean stop).

    ``ready(host, port)`` is called once the socket listens (the CLI prints the address).
    """
    require_extra()
    import json
    import os
    import signal

    import uvicorn

    from bertcli.serve.app import ENV_OPTIONS, create_app, setup_logging

    setup_logging(options)
    common = dict(host=options.host, port=options.port, log_level="warning", access_log=False,
                  timeout_graceful_shutdown=options.grace, lifespan="on")
    terminated = []
    # uvicorn re-raises the signal it stopped for once it is done; with this handler in place that
    # ends in a clean exit 0 instead of death by SIGTERM.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: terminated.append(sig))
    try:
        if options.workers > 1:
            os.environ[ENV_OPTIONS] = json.dumps(options.to_dict())
            if ready is not None:
                ready(options.host, options.port)
            uvicorn.run("bertcli.serve.app:app_from_env", factory=True, workers=options.workers, **common)
            return 0
        options.apply_threads()
        app = create_app(options)
        config = uvicorn.Config(app, **common)
        server = uvicorn.Server(config)
        if ready is not None:
            _notify_when_started(server, ready, options)
        server.run()
        return 0 if server.started else 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _notify_when_started(server, ready, options) -> None:
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        if server.started:
            port = options.port
            for s in server.servers:
                for sock in s.sockets:
                    port = sock.getsockname()[1]
            ready(options.host, port)

    server.startup = startup
