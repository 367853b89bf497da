"""The HTTP API sidecar (Flask). It edits desired files and reads the state DB; it never
imports a runtime. ``create_app`` lives in ``reconciler.api.app``."""
