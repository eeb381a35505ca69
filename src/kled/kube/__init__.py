"""The Kubernetes-compatible API of Kled Clusters: discovery, kinds, patches, tables, watch.

Sits beside ``kled.api`` (it uses the service layer's store, credentials and admission);
nothing below the API layer imports it.
"""
