"""The edge: one Caddy in front of every site, for stable addresses and switches without reloads.

::

    config.py   edge_config(settings, sites) -> dict, pure and table-tested
    caddy.py    the Caddy adapter: admin API over a unix socket, the process
    manager.py  Edge: keeps Caddy running the config for the wanted sites (batched loads)
"""
