"""Workspaces: devcontainer.json read as the reference CLI reads it, and the pure plans built on it.
Used by kled.agent and kled.control; imports only kled.resources and kled.errors."""
