"""The read side: what an operator can see and do through the API and the CLI (``operations``),
the read models (``views``) and their cache (``readcache``). Writes only edit desired files.
"""
