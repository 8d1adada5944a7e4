"""The planner toolkit on its own: a planner that writes only ``ask_model`` (and ``start``, ``notes``) gets
the three stages, the retry with the error fed back, the per-condition fallback and the repair."""

from __future__ import annotations

import pytest
from PIL import Image

from sow.errors import InputError, PlannerError
from sow.planners.toolkit import SYSTEM, PlannerOptions, Question, StagedPlanner
from sow.planners.toolkit.answers import DescriptionAnswer, PositionAnswer, RegionAnswer
from sow.schemas import GenerationConfig
from sow.stages import PlanRequest


class Scripted(StagedPlanner):
    """An API-style planner: its 'model' answers from a script; the session records the questions."""

    name = "scripted-api"
    family = "scripted"

    def __init__(self, replies, **options):
        super().__init__(**options)
        self.replies = list(replies)

    def start(self):
        return {"asked": []}

    def ask_model(self, session, question: Question) -> str:
        session["asked"].append((question.stage, question.answer_model, question.text, len(question.tries)))
        return self.replies.pop(0)

    def notes(self, session):
        return [f"scripted: {len(session['asked'])} questions"]


def one(prompt="a chef in a busy kitchen"):
    return PlanRequest(condition=Image.new("RGB", (300, 300), (120, 90, 80)), prompt=prompt, config=GenerationConfig())


def test_three_questions_in_order_and_the_session_is_the_planners():
    planner = Scripted(['{"description": "a man", "prompt": "a man, a chef"}', '{"box_v": [160, 40, 200, 200]}',
                        '{"box_r": [110, 240, 300, 272]}'])
    plan, timings = planner.plan_timed(one())
    assert plan.planner == "scripted-api" and plan.prompt == "a man, a chef" and plan.description == "a man"
    assert plan.box_v.as_list() == [160, 40, 200, 200] and plan.box_r.as_list() == [110, 240, 300, 272]
    assert plan.notes == ["scripted: 3 questions"] and plan.repairs == []
    assert list(timings) == ["load", "intensify#0", "position#0", "refine#0"]


def test_the_question_carries_the_words_the_schema_and_the_conversation():
    planner = Scripted(["no json", '{"description": "a man", "prompt": "a man, a chef"}', '{"box_v": [160, 40, 200, 200]}',
                        '{"box_r": [110, 240, 300, 272]}'])
    seen: list[Question] = []
    ask = planner.ask_model
    planner.ask_model = lambda session, question: seen.append(question) or ask(session, question)
    plan = planner.plan(one())
    first = seen[0]
    assert first.system == SYSTEM and first.answer_model is DescriptionAnswer and "a chef in a busy kitchen" in first.text
    assert first.tries and first.tries[0][0] == "no json" and first.tries[0][1].startswith("Your answer could not be used")
    roles = [m["role"] for m in first.messages()]
    assert roles == ["system", "user", "assistant", "user"]  # the retry: the rejected answer, then the feedback
    assert [q.answer_model for q in seen] == [DescriptionAnswer, DescriptionAnswer, PositionAnswer, RegionAnswer]
    assert "box_v = [160, 40, 200, 200]" in seen[-1].text
    assert plan.repairs[0].startswith("intensify answer read on retry 1")


def test_an_unreadable_stage_is_one_planner_error_line():
    with pytest.raises(PlannerError, match=r"^scripted position answer unusable after 1 tries: no JSON object"):
        Scripted(['{"description": "a man", "prompt": "a man"}', "nothing"], retries=0).plan(one())


def test_several_conditions_a_missing_box_falls_back_alone():
    images = [Image.new("RGB", (300, 300)), Image.new("RGB", (300, 300))]
    request = PlanRequest(condition=images[0], conditions=images, prompt="two friends",
                          config=GenerationConfig(canvas={"width": 768, "height": 512}))
    planner = Scripted(['{"description": "two men", "prompt": "two men, two friends"}', '{"boxes": [[40, 40, 240, 240]]}',
                        '{"boxes": [[0, 280, 380, 232], [384, 280, 384, 232]]}'])
    plan = planner.plan(request)
    assert [c.image for c in plan.conditions] == [0, 1] and plan.conditions[0].box_v.as_list() == [40, 40, 240, 240]
    assert any(r.startswith("condition 2: the answer gave no box_v") for r in plan.repairs)
    assert plan.notes == ["scripted: 3 questions", "2 conditions, asked on a strip of the photos"]


def test_options_are_validated_with_the_planners_name():
    class WithEndpoint(PlannerOptions):
        endpoint: str = "http://127.0.0.1"

    class Planner(Scripted):
        options_class = WithEndpoint

    assert Planner([], endpoint="http://x").options.endpoint == "http://x"
    with pytest.raises(InputError, match="planner 'scripted-api' option temperature"):
        Planner([], temperature=1)
