"""Helpers shared by the test suite (import as ``from helpers.<module> import ...``).

``tests/`` is on ``sys.path`` because it holds the root ``conftest.py`` (pytest's default
``prepend`` import mode), so no test needs to edit ``sys.path`` to reach these modules.
"""
