"""`switchboard-journal`: export, listen to and replay a call's journal (see switchboard.journal)."""
