"""Twilio REST emulator: the Calls and Conferences API, signed callbacks, AMD, and Twilio's media side.

See README.md. Pure modules (no I/O): errors, auth, forms, validate, numbers, twiml, lifecycle,
amd, callees, pacing, conference, resources. The I/O shell: webhooks, calls, media, dialing,
rooms, api, admin, server, main, load.
"""
