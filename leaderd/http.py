"""The HTTP server: /healthz, /readyz, /status and /metrics for probes and Prometheus.

Every handler asks the elector at the moment it answers, so a process that was
frozen past its deadline answers 503 on /readyz as soon as it runs again.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .election import Elector


def make_app(elector: Elector, registry: CollectorRegistry) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        if elector.healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "stalled"}, status=503)

    async def readyz(request: web.Request) -> web.Response:
        status = elector.status()  # computed once: body and code always agree
        ready = status["role"] == "leader" and status["valid_until"] is not None
        return web.json_response(status, status=200 if ready else 503)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(elector.status())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; raises OSError (e.g. address in use) for the caller to report."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
