"""The process runtime: sites as processes on this host (a session each, or a systemd unit),
with the built-in static server (``static``) and a site unit's first process (``sitexec``).
"""
