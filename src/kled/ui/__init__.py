"""The web console: pages at ``/ui`` served by the control plane.

It sits beside ``kled.api`` and reads and writes only through its service layer
(``kled.api.service``), so every rule — who may, admission, team isolation — is the API's.
"""
