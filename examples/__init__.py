"""The meshid examples (examples/README.md): run them from the repository root with python -m."""
