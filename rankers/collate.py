"""Old import path, kept for one release: this module is :mod:`rankers.models.collate` (the same module object,
so attributes set here are set there)."""
import sys

from rankers.models import collate as _module

sys.modules[__name__] = _module
