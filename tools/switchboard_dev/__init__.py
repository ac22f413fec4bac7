"""Development tooling: process helpers, the one stack builder, the local run, test audio.

Nothing here ships in a service's import graph: `src/switchboard` and `services/` never
import it; tests, the emulator, the simulator and the benchmark do.
"""
