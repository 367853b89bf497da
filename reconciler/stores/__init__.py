"""The stores: everything under the data dir and the desired dir, and the only SQL.

``desired`` (the desired files, with their git backend ``desired.git``), ``releases`` (the
content-addressed release store), ``state`` (SQLite), ``ports``, ``gitcache`` (per-project git
caches), ``facts`` (what the stores hold, as the planner's two views) and ``opened`` (the one
function that opens them all for a ``Config``).
"""
