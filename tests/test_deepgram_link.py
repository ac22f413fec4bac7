"""Opening the Deepgram session against servers that order the handshake differently."""

import orjson
import pytest
from websockets.asyncio.server import serve

from switchboard.agent_settings import AgentSettings
from switchboard_worker.deepgram_link import DeepgramUnavailable, open_agent


async def _server(handler):
    return await serve(handler, "127.0.0.1", 0)


LIBRARIES = ["picows", "websockets"]


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("sends_welcome", [True, False])
async def test_settings_are_applied_whether_or_not_the_server_says_welcome_first(sends_welcome, library):
    received = []

    async def handler(ws):
        if sends_welcome:
            await ws.send('{"type":"Welcome","request_id":"r-1"}')
        received.append(orjson.loads(await ws.recv()))
        await ws.send('{"type":"SettingsApplied"}')
        await ws.wait_closed()

    async with await _server(handler) as server:
        port = server.sockets[0].getsockname()[1]
        ws, request_id, _ = await open_agent(f"ws://127.0.0.1:{port}", "key", AgentSettings().to_settings_message(), 5,
                                             library=library)
        await ws.close()
    assert received[0]["type"] == "Settings"
    assert request_id == ("r-1" if sends_welcome else "")


@pytest.mark.parametrize("library", LIBRARIES)
async def test_an_error_instead_of_settings_applied_is_a_typed_failure(library):
    async def handler(ws):
        await ws.send('{"type":"Welcome","request_id":"r-2"}')
        await ws.recv()
        await ws.send('{"type":"Error","code":"INVALID_SETTINGS","description":"bad model"}')
        await ws.close()

    async with await _server(handler) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(DeepgramUnavailable) as failed:
            await open_agent(f"ws://127.0.0.1:{port}", "key", AgentSettings().to_settings_message(), 5,
                             library=library)
    assert failed.value.code == "INVALID_SETTINGS" and not failed.value.retryable


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize(("status", "retryable"), [(429, True), (503, True), (401, False)])
async def test_a_refused_handshake_says_its_status_and_whether_to_retry(library, status, retryable):
    def refuse(connection, request):
        return connection.respond(status, "no\n")

    async with await serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(DeepgramUnavailable) as failed:
            await open_agent(f"ws://127.0.0.1:{port}", "key", AgentSettings().to_settings_message(), 5,
                             library=library)
    assert failed.value.code == f"http_{status}" and failed.value.retryable is retryable
