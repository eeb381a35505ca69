"""Workspaces: devcontainer.json read faithfully (JSONC, discovery, model, variables,
features, lifecycle plan), the pure core the workspace runtime is built on.

Sits beside ``kled.agent`` and ``kled.control``, which use it; it may import only
``kled.resources`` and ``kled.errors``.
"""
