"""Outbound calls and campaigns (the control API's part): see README "Outbound calls and campaigns"."""
