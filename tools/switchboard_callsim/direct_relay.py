"""`switchboard-direct-relay`: one process, no Redis, Twilio ⇄ Deepgram — the latency baseline.

What Switchboard would cost if it did not exist: each Twilio call gets its own Deepgram
connection in the same process. Caller audio is forwarded frame by frame as it arrives
(buffered only until `SettingsApplied`), agent audio goes to Twilio at once, and
`UserStartedSpeaking` becomes a Twilio `clear`. Deliberately lean: no marks, no failover,
no function calls.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Request, Response, Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from switchboard import deepgram, logs, runtime, signature, twilio
from switchboard.agent_settings import AgentSettings

log = logging.getLogger("switchboard.direct_relay")
DEFAULT_DEEPGRAM_URL = "wss://agent.deepgram.com/v1/agent/converse"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8090  # 0 = any free port (see `bound_port`)
    deepgram_url: str = DEFAULT_DEEPGRAM_URL
    deepgram_api_key: str | None = None
    auth_token: str | None = None  # when set, X-Twilio-Signature must match public_url
    public_url: str = ""
    keepalive_s: float = 5.0
    agent: AgentSettings = field(default_factory=AgentSettings)


class _CallRelay:
    def __init__(self, config: RelayConfig, twilio_ws: ServerConnection) -> None:
        self.config = config
        self.twilio_ws = twilio_ws
        self.stream_sid = ""
        self.call_sid = ""
        self.dg: ClientConnection | None = None
        self.pending: deque[bytes] | None = deque()  # None once SettingsApplied: forward directly
        self.last_audio = 0.0
        self.keepalive: asyncio.Task[None] | None = None

    @property
    def _ids(self) -> dict[str, str]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid}

    async def run(self) -> None:
        dg_task: asyncio.Task[None] | None = None
        try:
            async for frame in self.twilio_ws:
                try:
                    event = twilio.parse(frame)
                except twilio.TwilioProtocolError as exc:
                    log.warning("bad Twilio frame: %s", exc, extra=self._ids)
                    continue
                if isinstance(event, twilio.Media):
                    if self.pending is not None:
                        self.pending.append(event.payload)
                    elif self.dg is not None:
                        self.last_audio = asyncio.get_running_loop().time()
                        await self.dg.send(event.payload)
                elif isinstance(event, twilio.Start) and dg_task is None:
                    self.stream_sid, self.call_sid = event.stream_sid, event.call_sid
                    dg_task = asyncio.create_task(self._deepgram())
                elif isinstance(event, twilio.Stop):
                    break
        except ConnectionClosed:
            pass
        finally:
            if self.dg is not None:
                await self.dg.close()
            if dg_task is not None:
                try:
                    await asyncio.wait_for(dg_task, 5)
                except TimeoutError:
                    log.warning("Deepgram side did not close in time", extra=self._ids)
            await self.twilio_ws.close()

    async def _deepgram(self) -> None:
        cfg = self.config
        headers = {"Authorization": f"Token {cfg.deepgram_api_key}"} if cfg.deepgram_api_key else {}
        try:
            async with connect(cfg.deepgram_url, additional_headers=headers, compression=None, max_size=None) as dg:
                self.dg = dg
                try:
                    await self._from_deepgram(dg)
                finally:
                    if self.keepalive is not None:
                        self.keepalive.cancel()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("Deepgram connect failed: %r", exc, extra=self._ids)
        except ConnectionClosed:
            pass
        except Exception:  # task boundary
            log.exception("Deepgram relay crashed", extra=self._ids)
        # Deepgram gone: close the Twilio side so TwiML continues after <Connect>.
        await self.twilio_ws.close()

    async def _from_deepgram(self, dg: ClientConnection) -> None:
        tw, sid = self.twilio_ws, self.stream_sid
        async for msg in dg:
            if isinstance(msg, bytes):
                await tw.send(twilio.media_message(sid, msg))
                continue
            try:
                kind = deepgram.parse_server(msg)["type"]
            except deepgram.DeepgramProtocolError as exc:
                log.warning("bad Deepgram message: %s", exc, extra=self._ids)
                continue
            if kind == "UserStartedSpeaking":
                await tw.send(twilio.clear_message(sid))
            elif kind == "Welcome":
                tags = ["switchboard", f"callsid:{self.call_sid}"]
                await dg.send(deepgram.settings(self.config.agent.to_settings_message(tags=tags)))
            elif kind == "SettingsApplied":
                pending = self.pending or deque()
                while pending:  # the Twilio reader keeps appending until `pending` is None
                    await dg.send(pending.popleft())
                self.pending = None
                self.last_audio = asyncio.get_running_loop().time()
                # Not earlier: anything but Settings before SettingsApplied is a fatal error.
                self.keepalive = asyncio.create_task(self._keepalive(dg))
            elif kind in ("Error", "Warning"):
                log.warning("Deepgram %s %s", kind, msg[:300], extra=self._ids)

    async def _keepalive(self, dg: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.keepalive_s
        while True:
            idle = loop.time() - self.last_audio
            if idle >= period:
                await dg.send(deepgram.KEEPALIVE)
                self.last_audio = loop.time()
                idle = 0.0
            await asyncio.sleep(period - idle)


def _process_request(config: RelayConfig):
    def check(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0].rstrip("/") != "/twilio":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if config.auth_token and not signature.stream_signature_valid(
            config.auth_token, config.public_url, request.headers.get("X-Twilio-Signature")
        ):
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None

    return check


def relay_server(config: RelayConfig):
    """An unstarted websockets server (`async with relay_server(cfg) as server:`)."""

    async def handler(ws: ServerConnection) -> None:
        await _CallRelay(config, ws).run()

    return serve(
        handler, config.host, config.port, process_request=_process_request(config), compression=None, max_size=None
    )


def bound_port(server: Server) -> int:
    return server.sockets[0].getsockname()[1]


async def _serve_forever(config: RelayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with relay_server(config) as server:
        log.info("direct relay on %s:%d → %s", config.host, bound_port(server), config.deepgram_url)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="switchboard-direct-relay", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--deepgram-url", default=DEFAULT_DEEPGRAM_URL)
    p.add_argument("--deepgram-api-key", default=os.environ.get("DEEPGRAM_API_KEY"), help="env DEEPGRAM_API_KEY")
    p.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"), help="check X-Twilio-Signature")
    p.add_argument("--public-url", default="", help="the wss:// URL Twilio signs (needed with --auth-token)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.auth_token and not args.public_url:
        p.error("--auth-token needs --public-url")
    logs.setup("direct-relay", args.log_level)
    config = RelayConfig(
        host=args.host,
        port=args.port,
        deepgram_url=args.deepgram_url,
        deepgram_api_key=args.deepgram_api_key,
        auth_token=args.auth_token,
        public_url=args.public_url,
    )
    runtime.install_event_loop()
    asyncio.run(_serve_forever(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
