"""meshid: what a service links to join the mesh.

This package never imports ``ca``: a service runs on SVID files from any issuer.
"""
