"""Helpers shared by every test area (importable because pytest puts tests/ on sys.path)."""
