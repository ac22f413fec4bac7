"""call.ended: every ended call's outcome, delivered to the team's systems (signed, retried, once).
Its settings are `call_ended_settings.CallOutSettings`, beside the control API's settings.

- `store`: the outbox in Redis (keys in `switchboard.call_ended`): claim, deliver once, retry, dead letters;
- `payload`: what a call.ended says, built from the call's records and events;
- `delivery`: the loop every control replica runs;
- `links`: the signed, expiring recording links the payload carries;
- `metrics`.
"""
