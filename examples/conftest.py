"""The example plugins' tests share the core's fixtures (tiny model, sample face, registries)."""

from tests.conftest import *  # noqa: F401,F403
