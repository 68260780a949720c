import os
import sys

from hypothesis import settings

# tests/oracles.py is imported by name from the test modules.
sys.path.insert(0, os.path.dirname(__file__))

# CI runs the same examples every time (no flaky first-time finds) and never times out on a busy machine.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
