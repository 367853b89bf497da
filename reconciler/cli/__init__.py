"""The command line: ``reconciler <command>``; ``main`` parses, ``commands`` are the operator's
verbs, ``client`` talks to the stores on this host or to the HTTP API.
"""
