"""The sync engine of ``kled dev``: an index, a pure planner, a framed channel, the remote side.

Imports only ``kled.errors`` and ``kled.resources``; ``remote``, ``channel``, ``index`` and
``ignore`` use the standard library alone, so they run in any image that has ``python3``.
"""
