"""sow-gemini: a sow planner on Google's Gemini API (``--planner gemini``).

Registered through the entry point ``gemini = "sow_gemini"`` in the group ``sow``; this
module is the plugin object pluggy sees.
"""

from __future__ import annotations

from sow import hookimpl
from sow_gemini.planner import GeminiOptions, GeminiPlanner

__all__ = ["GeminiOptions", "GeminiPlanner", "register_planners"]
__version__ = "0.1.0"


@hookimpl
def register_planners(register):
    register(GeminiPlanner)
