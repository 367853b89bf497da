"""The core: what every part speaks in, with no I/O of its own but small file helpers.

``spec`` (the desired file's schema), ``kinds`` (the closed sets), ``errors`` (what the loop
understands), ``plan`` (the pure planner and its step classifier), ``config`` (the settings, their
validation and the data dir's layout), ``queue`` (the keyed delaying queue), and ``fileio``,
``logfiles``, ``timeutil``. Nothing here imports another part of reconciler.
"""
