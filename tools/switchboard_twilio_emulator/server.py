"""The emulator's server life: bind (port 0 = ephemeral), serve the REST and admin APIs, shut down.

    async with TwilioEmulator(config) as twilio:
        client = twilio.client()          # the official twilio.rest.Client, pointed here
        call = client.calls.create(to=..., from_=..., url=...)
        await twilio.wait_call(call.sid, "ended")

Shutdown hangs up every live call (their streams get Twilio's `stop`), stops the callback
tasks, then the HTTP server, within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from starlette.applications import Starlette

from switchboard_callsim.call import Pacer

from .admin import WAITS, Admin, _reached
from .api import Api
from .calls import CallActor
from .config import EmulatorConfig
from .core import Core

log = logging.getLogger("switchboard_twilio_emulator.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield  # whoever runs the emulator handles signals (main.py, or the test)


class TwilioEmulator:
    def __init__(self, config: EmulatorConfig, callees: Sequence[str] = ()) -> None:
        self.config = config
        self._directory = config.directory(callees)
        self.port = config.port
        self.core: Core | None = None
        self._pacer: Pacer | None = None
        self._http: httpx.AsyncClient | None = None
        self._server: _Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The API base: what replaces https://api.twilio.com."""
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        self._http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200), follow_redirects=False)
        self._pacer = await Pacer().__aenter__()
        self.core = Core(self.config, self._directory, self._http, self._pacer)
        app = Starlette(routes=[*Admin(self.core).routes(), *Api(self.core).routes()])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                   timeout_graceful_shutdown=5, loop="none")
        self._server = _Server(uv_config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="twilio emulator http")
        while not self._server.started:
            if self._serve_task.done():
                await self._serve_task  # raises what went wrong
                raise RuntimeError("the HTTP server stopped during startup")
            await asyncio.sleep(0.01)  # uvicorn exposes no startup event to await
        log.info("Twilio REST emulator listening on %s", self.url, extra={"port": self.port})

    async def close(self) -> None:
        if self.core is not None:
            await self.core.close()
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            await asyncio.wait({self._serve_task}, timeout=10)
        if self._pacer is not None:
            await self._pacer.__aexit__(None, None, None)
        if self._http is not None:
            await self._http.aclose()
        self.core = self._server = self._serve_task = self._pacer = self._http = None
        log.info("Twilio REST emulator stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- conveniences for tests in this process -------------------------------------------------
    def call(self, sid: str) -> CallActor:
        assert self.core is not None
        return self.core.calls[sid]

    async def wait_call(self, sid: str, what: str = "ended", timeout: float = 30) -> CallActor:
        """Until the call reaches `what` (answered, ended, report, or a status); TimeoutError after `timeout`."""
        assert self.core is not None and what in WAITS
        call = await self.core.changes.wait_for(lambda: self.core.calls.get(sid), timeout)  # type: ignore[union-attr]
        await self.core.changes.wait_for(lambda: _reached(call, what), timeout)
        return call

    async def wait_for(self, predicate: Any, timeout: float = 30) -> Any:
        assert self.core is not None
        return await self.core.changes.wait_for(predicate, timeout)

    def client(self, username: str | None = None, password: str | None = None) -> Any:
        """The official `twilio.rest.Client`, sending to this emulator instead of api.twilio.com."""
        from twilio.rest import Client

        account = self.config.account()
        client = Client(username or account.sid, password or account.auth_token, account_sid=account.sid)
        client.api.base_url = self.url  # Twilio's client builds every API URL from this domain's base_url
        return client
