"""Old import path, kept for one release: this module is :mod:`rankers.models.dual_encoder` (the same module object,
so attributes set here are set there)."""
import sys

from rankers.models import dual_encoder as _module

sys.modules[__name__] = _module
