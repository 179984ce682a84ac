"""The test suite; `python -m tests` runs every check (see tests/__main__.py)."""
