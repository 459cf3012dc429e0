"""Old import path, kept for one release: this module is :mod:`rankers.models.backbone` (the same module object,
so attributes set here are set there)."""
import sys

from rankers.models import backbone as _module

sys.modules[__name__] = _module
