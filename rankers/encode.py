"""Old import path, kept for one release: this module is :mod:`rankers.retrieval.encode` (the same module object,
so attributes set here are set there)."""
import sys

from rankers.retrieval import encode as _module

sys.modules[__name__] = _module
