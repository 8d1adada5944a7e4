"""The shared MLLM answer parser on a corpus of realistic messy answers, each with its expected result."""

from __future__ import annotations

from pathlib import Path

import pytest

from sow.planners.toolkit.answers import AnswerError, DescriptionAnswer, PositionAnswer, RegionAnswer, parse_answer, retry_message
from sow.schemas import Canvas

CANVAS = Canvas(width=512, height=512)
D, P, R = DescriptionAnswer, PositionAnswer, RegionAnswer

# (id, answer text, answer model, expected field values, substrings expected in the repairs)
GOOD = [
    ("clean", '{"box_v": [160, 40, 192, 192]}', P, {"box_v": (160, 40, 192, 192)}, []),
    ("fenced", '```json\n{"box_v": [160, 40, 192, 192]}\n```', P, {"box_v": (160, 40, 192, 192)}, []),
    ("prose-around", 'Sure! Here is the placement:\n{"box_r": [100, 232, 300, 280]}\nThe body sits below the face.', R,
     {"box_r": (100, 232, 300, 280)}, []),
    ("trailing-comma", '{"box_v": [160, 40, 192, 192],}', P, {"box_v": (160, 40, 192, 192)}, ["repaired"]),
    ("single-quotes", "{'description': 'a bearded man in a suit', 'prompt': \"a bearded man in a suit, a chef\"}", D,
     {"description": "a bearded man in a suit", "prompt": "a bearded man in a suit, a chef"}, ["single quotes"]),
    ("python-none", "{'description': None, 'prompt': 'a chef in a kitchen',}", D,
     {"description": "", "prompt": "a chef in a kitchen"}, ["repaired"]),
    ("xyxy-list", '{"box_v": [200, 100, 420, 330]}', P, {"box_v": (200, 100, 220, 230)}, ["[x1, y1, x2, y2] corners"]),
    ("xyxy-keys", '{"box_v": {"x1": 100, "y1": 50, "x2": 300, "y2": 250}}', P, {"box_v": (100, 50, 200, 200)}, ["x1/y1/x2/y2"]),
    ("normalized-0-1", '{"box_v": [0.3, 0.1, 0.4, 0.4]}', P, {"box_v": (153.6, 51.2, 204.8, 204.8)}, ["normalized 0-1"]),
    ("grid-0-1000-corners", '{"box_v": [600, 100, 900, 450]}', P, {"box_v": (307.2, 51.2, 153.6, 179.2)},
     ["0-1000 grid", "corners"]),
    ("qwen-bbox_2d", '```json\n[\n  {"bbox_2d": [120, 40, 320, 240], "label": "face"}\n]\n```', P,
     {"box_v": (120, 40, 200, 200)}, ["renamed", "corners"]),
    ("alias-box", '{"box": [160, 40, 192, 192]}', P, {"box_v": (160, 40, 192, 192)}, ["given as 'box'"]),
    ("wrapped", '{"answer": {"box_r": [112, 232, 288, 280]}}', R, {"box_r": (112, 232, 288, 280)}, ["unwrapped"]),
    ("echoed-schema-then-answer", 'The format is {"box_v": [x, y, w, h]}. My answer: {"box_v": [150, 30, 200, 200]}', P,
     {"box_v": (150, 30, 200, 200)}, ["object 2 was used"]),
    ("two-valid-objects", '{"box_v": [10, 20, 200, 200]}\n{"box_v": [300, 20, 200, 200]}', P, {"box_v": (10, 20, 200, 200)},
     ["object 1 was used, 1 ignored"]),
    ("truncated-after-value", '{"description": "an older man", "prompt": "an older man, a chef in a busy kitchen",', D,
     {"prompt": "an older man, a chef in a busy kitchen"}, ["cut off"]),
    ("numbers-as-strings", '{"box_v": ["160", "40px", "192", "192"]}', P, {"box_v": (160, 40, 192, 192)}, []),
    ("width-height-keys", '{"box_r": {"left": 100, "top": 240, "width": 300, "height": 272}}', R,
     {"box_r": (100, 240, 300, 272)}, []),
    ("off-canvas-left-to-repair", '{"box_r": [-20, 300, 600, 300]}', R, {"box_r": (-20, 300, 600, 300)}, []),
    ("extra-keys-ignored", '{"description": "a child", "prompt": "a child on a beach", "box_v": [1, 2, 3, 4], "confidence": 0.9}', D,
     {"description": "a child", "prompt": "a child on a beach"}, []),
    ("two-corner-points", '{"box_v": [[100, 60], [300, 260]]}', P, {"box_v": (100, 60, 200, 200)}, ["two corner points"]),
]

# (id, answer text, answer model, substring of the one-line error)
BAD = [
    ("no-json", "I'm sorry, I cannot determine a position for this image.", P, "no JSON object found"),
    ("empty", "   \n", P, "empty"),
    ("missing-field", '{"description": "a man with glasses"}', D, "prompt: Field required"),
    ("three-numbers", '{"box_v": [160, 40, 192]}', P, "four numbers"),
    ("truncated-mid-string", '{"description": "a man with a beard", "prompt": "a man with a be', D, "cut off"),
    ("random-model-garbage", "chen{~ 12 Akit4", P, "not valid JSON"),
    ("placeholder-only", 'Answer: {"box_v": [x, y, w, h]}', P, "not valid JSON"),
    ("empty-prompt", '{"description": "a dog", "prompt": ""}', D, "prompt"),
    ("box-of-words", '{"box_v": "top centre"}', P, "box_v"),
    ("list-not-object", '[160, 40, 192, 192]', P, "no JSON object"),
]


@pytest.mark.parametrize("text, model, expected, repairs", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_messy_answer_reads_as_expected(text, model, expected, repairs):
    parsed = parse_answer(text, model, CANVAS)
    for name, value in expected.items():
        got = getattr(parsed.value, name)
        if isinstance(value, tuple):
            assert got == pytest.approx(value), name
        else:
            assert got == value, name
    for fragment in repairs:
        assert any(fragment in line for line in parsed.repairs), (fragment, parsed.repairs)
    if not repairs:
        assert parsed.repairs == []


@pytest.mark.parametrize("text, model, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_unusable_answer_gives_one_line_error(text, model, message):
    with pytest.raises(AnswerError) as info:
        parse_answer(text, model, CANVAS)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_conversion_the_reader_records_is_exercised_by_a_good_answer():
    """Each ``repairs.append`` of the answer reader runs for some GOOD case (a new one needs a case)."""
    import sys

    import sow.planners.toolkit.answers as answers

    source = Path(answers.__file__)
    sites = {n for n, line in enumerate(source.read_text().splitlines(), 1) if "repairs.append(" in line}
    assert len(sites) >= 5
    ran: set[int] = set()

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != str(source):
            return None
        if event == "line":
            ran.add(frame.f_lineno)
        return tracer

    sys.settrace(tracer)
    try:
        for _, text, model, _, _ in GOOD:
            parse_answer(text, model, CANVAS)
    finally:
        sys.settrace(None)
    assert sites <= ran, f"conversions no GOOD case exercises: lines {sorted(sites - ran)} of {source.name}"
    assert len({g[0] for g in GOOD}) == len(GOOD) and len({b[0] for b in BAD}) == len(BAD)  # ids name one case each


def test_retry_message_feeds_back_the_error_and_the_form():
    with pytest.raises(AnswerError) as info:
        parse_answer('{"description": "x"}', DescriptionAnswer, CANVAS)
    text = retry_message(info.value, DescriptionAnswer)
    assert "prompt: Field required" in text and DescriptionAnswer.example() in text


def test_pixel_boxes_that_fit_are_never_reinterpreted():
    # [100, 50, 300, 400] fits as [x, y, w, h]: no corner or scale guess is made
    parsed = parse_answer('{"box_v": [100, 50, 300, 400]}', PositionAnswer, CANVAS)
    assert parsed.value.box_v == (100, 50, 300, 400) and parsed.repairs == []


def test_canvas_of_1000_pixels_is_not_mistaken_for_the_grid():
    parsed = parse_answer('{"box_v": [600, 100, 300, 300]}', PositionAnswer, Canvas(width=1000, height=1000))
    assert parsed.value.box_v == (600, 100, 300, 300)


from hypothesis import given, settings
from hypothesis import strategies as st

from sow.planners.toolkit.answers import read_box


@st.composite
def boxes_on_canvas(draw):
    width = draw(st.sampled_from([256, 512, 768]))
    height = draw(st.sampled_from([256, 512, 768]))
    w = draw(st.integers(8, width))
    h = draw(st.integers(8, height))
    return Canvas(width=width, height=height), (draw(st.integers(0, width - w)), draw(st.integers(0, height - h)), w, h)


@settings(max_examples=150, deadline=None)
@given(boxes_on_canvas(), st.sampled_from(["list", "xywh-keys", "corner-keys", "bbox_2d", "normalized", "corner-points"]))
def test_every_accepted_form_of_a_box_on_the_canvas_reads_back_the_same(case, form):
    canvas, (x, y, w, h) = case
    written = {
        "list": [x, y, w, h],
        "xywh-keys": {"x": x, "y": y, "w": w, "h": h},
        "corner-keys": {"x1": x, "y1": y, "x2": x + w, "y2": y + h},
        "bbox_2d": {"bbox_2d": [x, y, x + w, y + h]},
        "normalized": [x / canvas.width, y / canvas.height, w / canvas.width, h / canvas.height],
        "corner-points": [[x, y], [x + w, y + h]],
    }[form]
    repairs: list[str] = []
    assert read_box(written, "box_v", canvas, repairs) == pytest.approx((x, y, w, h), abs=1e-6)
    assert (repairs == []) == (form in ("list", "xywh-keys"))
