"""The HTTP API sidecar (Flask). It edits desired files and reads the state DB; it never
imports a runtime."""

from reconciler.api.app import create_app

__all__ = ["create_app"]
