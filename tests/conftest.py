import os
import sys

# tests/oracles.py is imported by name from the test modules.
sys.path.insert(0, os.path.dirname(__file__))
