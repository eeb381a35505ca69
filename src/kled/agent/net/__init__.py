"""The host network layer of the agent: team gateways, pods' namespaces, the mesh, devices.

Entry points: ``host.LinuxHostNetwork`` (the ``HostNetworkLayer`` seam the agent uses, built
on ``host.reconcile_host``), ``gateway`` and ``pods`` for single pieces, ``device`` for
``kled device join|config``. The layout is described in docs/network.md.
"""
