"""The core of kbpg: inventory, credentials, settings, events, SSH, steps, diagnostics, lab.

Nothing under this package may import Textual (tests/test_core_isolation.py checks it).
"""
