"""The sources of change: the desired dir's watcher, the follower of git refs and source dirs,
and the push webhooks. Each only queues a project; the controller decides what to do.
"""
