"""`python -m switchboard_twilio_emulator`: the same as the `switchboard-twilio-emulator` console script."""

import sys

from .main import main

sys.exit(main())
