"""The daemon: the composition root that makes every long-lived part from a ``Config``, starts
them in order and stops them in reverse; plus what only the daemon talks to (systemd's notify
socket, deploy notifications).
"""
