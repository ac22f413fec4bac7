"""The emulator's server life: start on a port (0 = ephemeral), serve sessions, shut down cleanly.

    async with EmulatorServer(config) as emulator:
        connect(emulator.url, additional_headers={"Authorization": "Token x"})
"""

from __future__ import annotations

import logging
from types import TracebackType
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from .config import EmulatorConfig
from .faults import Faults
from .handshake import AGENT_PATH, Gate, select_subprotocol
from .records import Registry
from .session import Session

log = logging.getLogger("switchboard_emulator.server")

MAX_MESSAGE_BYTES = 1 << 20  # a Settings with a 25k-character prompt and many functions fits easily


class EmulatorServer:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.faults = Faults(config)
        self.registry = Registry()
        self._server: Server | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{AGENT_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=Gate(self.config, self.faults, self.registry),
            select_subprotocol=select_subprotocol,
            compression=None,  # deflate would cost more CPU than the whole emulator at 500 sessions
            max_size=MAX_MESSAGE_BYTES,
            logger=logging.getLogger("websockets.server"),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("emulator listening on %s", self.url, extra={"port": self.port})

    async def close(self) -> None:
        """Refuse new handshakes (503), close open sessions with 1001 and wait for their handlers."""
        if self._server is None:
            return
        # Stalled sessions wait on the fault, not on their socket: release them or they never end.
        self.faults.set_stall(False)
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        log.info("emulator stopped")

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _handle(self, connection: ServerConnection) -> None:
        path = urlsplit(connection.request.path).path if connection.request else AGENT_PATH
        await Session(connection, self.config, self.faults, self.registry, path).run()
