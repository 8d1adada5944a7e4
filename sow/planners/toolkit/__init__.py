"""The planner toolkit: the paper's three planner stages, for any model that answers questions.

Public API for plugin authors (docs/planners.md, docs/plugins.md). A planner on a multimodal
model - a local one (``sow-llava``, ``sow-qwen-vl``, through :class:`sow.planners.mllm.MLLMPlanner`)
or an API (``sow-gemini``) - subclasses :class:`StagedPlanner` and writes one method:

``ask_model(self, session, question) -> str``
    Ask the model ``question`` (a :class:`Question`: the stage's instructions and text, the
    image, earlier rejected answers with their feedback, the JSON Schema of the answer) and
    return its answer as text.

and, when it needs them, ``start(self)`` (load a model, open a client: what ``ask_model``
receives as ``session``, once per plan) and ``notes(self, session)`` (lines for
``plan.notes``). The toolkit does the rest, the same way for every model:

1. asks the three stages in turn - prompt intensification, adaptive position (box_v),
   contextual refinement (box_r) - with the words of :mod:`sow.planners.toolkit.prompts`;
   with several conditions, the ``_several`` stages on a numbered strip of the photos;
2. reads each answer with :func:`parse_answer` (code fences, Python-isms, truncation, every
   box convention; each conversion a line in ``plan.repairs``) and asks again, ``retries``
   times, with the error fed back;
3. with several conditions, lets a box that cannot be read fall back alone to its slot of the
   side-by-side layout (recorded);
4. assembles the plan through :func:`repair_plan` (side limits, canvas, overlaps; recorded),
   or raises one :class:`~sow.errors.PlannerError` line, so that ``--on-planner-error``
   decides what happens next (:func:`sow.planners.policy.plan_with_policy`).

The helpers a planner may want on its own are exported here too; among them
:func:`decoding_schema`, the stage's answer schema tightened for a model that can be
constrained to one (what :mod:`sow.planners.mllm.constrained` decodes under). May import the root
contract (``sow.schemas``, ``sow.stages``, ``sow.errors``) and ``sow.planners``; never
``sow.planners.mllm`` (which builds on it), the engine, eval, bench, batch or CLI.
"""
from sow.planners.fixed import body_box, condition_box
from sow.planners.layout import condition_strip, side_by_side, side_limits
from sow.planners.repair import repair_plan
from sow.planners.toolkit.answers import AnswerError, ParsedAnswer, parse_answer, read_box, retry_message
from sow.planners.toolkit.decoding import decoding_schema, longest_answer
from sow.planners.toolkit.prompts import STAGES, SYSTEM, stage_messages, stage_text, with_retry
from sow.planners.toolkit.staged import PlannerOptions, Question, StagedPlanner, each_box

__all__ = [
    "STAGES", "SYSTEM", "AnswerError", "ParsedAnswer", "PlannerOptions", "Question", "StagedPlanner",
    "body_box", "condition_box", "condition_strip", "decoding_schema", "each_box", "longest_answer", "parse_answer",
    "read_box", "repair_plan", "retry_message",
    "side_by_side", "side_limits", "stage_messages", "stage_text", "with_retry",
]
