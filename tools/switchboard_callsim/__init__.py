"""Twilio call simulator / load generator and the direct (no-Redis) relay baseline.

`playback`, `audiocheck`, `twiliomsg` and `script` are pure (no I/O); `call` runs one
simulated call over a WebSocket, `load` many of them, `main` is the CLI.
"""
