"""Old import path, kept for one release: this module is :mod:`rankers.evaluation.capacity` (the same module object,
so attributes set here are set there)."""
import sys

from rankers.evaluation import capacity as _module

sys.modules[__name__] = _module
