"""The web console at /console: pages and assets served by the control service itself, a
console session exchanged for the API token, and a live feed fanned out from one reader."""
