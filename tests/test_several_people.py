"""Several people in one image (issue 16): plans with several conditions, each kept pixel-exact.

The engine checks run on the tiny model at non-square canvases (192x128, 256x128): every
region is reset to its own condition's inverted latent at every replacement step, nothing
outside the regions is touched by the preserver, and the UNet count grows by t2 per extra
condition only.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sow.engine.context import RunContext
from sow.errors import InputError
from sow.hookspecs import hookimpl
from sow.io.images import load_condition
from sow.engine import pixels, seeding
from sow.viz import plan as plan_picture
from sow.engine.preservation import RegionReplacePreserver
from sow.pipeline import SOWPipeline
from sow.plugins import build_registry
from sow.schemas import Box, GenerationConfig, Plan
from sow.stages import RunInputs

FAST = {"cycles": 2}


def _faces(faces_dir, face_path):
    return [face_path, faces_dir / "obama.jpg", faces_dir / "biden.jpg"]


def _plan(width: int, height: int, boxes: list[list[int]], related: list[list[int]] | None = None) -> Plan:
    related = related or [[b[0], b[1] + b[3], b[2], height - b[1] - b[3]] for b in boxes]
    return Plan(
        canvas={"width": width, "height": height},
        conditions=[{"image": i, "box_v": b, "box_r": r} for i, (b, r) in enumerate(zip(boxes, related))],
        prompt="friends at a cafe",
    )


TWO = (192, 128, [[8, 8, 64, 64], [96, 16, 48, 48]])
THREE = (256, 128, [[0, 0, 64, 64], [80, 8, 56, 56], [160, 16, 48, 40]])


# -- the plan schema ------------------------------------------------------------------------


def test_a_one_condition_plan_file_of_today_still_loads():
    old = {"canvas": {"width": 512, "height": 512}, "box_v": [10, 20, 200, 200], "box_r": [0, 220, 300, 292],
           "crop": [1, 2, 30, 40], "prompt": "a chef", "planner": "heuristic"}
    plan = Plan.model_validate(old)
    assert len(plan.conditions) == 1
    one = plan.conditions[0]
    assert one.box_v.as_list() == [10, 20, 200, 200] and one.box_r.as_list() == [0, 220, 300, 292]
    assert one.crop.as_list() == [1, 2, 30, 40] and one.image == 0 and one.mask is None
    assert plan.box_v == one.box_v and plan.crop == one.crop  # one-condition readers
    again = Plan.model_validate_json(plan.model_dump_json())  # written in the new form, read back
    assert again == plan and "conditions" in json.loads(plan.model_dump_json())
    with pytest.raises(ValueError, match="not both"):
        Plan.model_validate({**old, "conditions": [{"box_v": [0, 0, 8, 8], "box_r": [0, 0, 8, 8]}]})


def test_overlapping_boxes_of_two_conditions_are_refused_naming_both():
    with pytest.raises(ValueError) as info:
        _plan(256, 256, [[0, 0, 100, 100], [120, 0, 64, 64], [150, 40, 64, 64]])
    message = str(info.value)
    assert "condition 2 box_v [120,0,64,64]" in message and "condition 3 box_v [150,40,64,64]" in message
    # related regions may overlap each other and the other person's box
    plan = _plan(256, 256, [[0, 0, 100, 100], [120, 0, 64, 64]], related=[[0, 0, 256, 256], [0, 50, 256, 206]])
    assert len(plan.conditions) == 2 and plan.overlaps() == []


def test_boxes_that_touch_once_snapped_to_the_latent_grid_are_refused_at_run_time(tiny_pipe, face_path):
    # 4..89 and 90..150: apart in pixels; [8,0,88,88] (8..96) and [88,0,64,64] on the 8-px grid (corners to the nearest line)
    plan = _plan(192, 128, [[4, 0, 85, 85], [90, 0, 60, 60]])
    assert plan.overlaps() == [] and len(plan.overlaps(8)) == 1
    with pytest.raises(InputError, match="condition 1 box_v and condition 2 box_v overlap once snapped"):
        tiny_pipe([face_path, face_path], "x", plan=plan, cycles=0, canvas={"width": 192, "height": 128})


def test_plan_images_must_match_the_images_given(tiny_pipe, face_path):
    plan = _plan(*TWO)
    with pytest.raises(InputError, match="plan condition 2 uses image 2, but 1 condition image was given"):
        tiny_pipe(face_path, "x", plan=plan, cycles=0, canvas={"width": 192, "height": 128})
    one = _plan(192, 128, [[8, 8, 64, 64]])
    with pytest.raises(InputError, match="condition image 2 not used by the plan"):
        tiny_pipe([face_path, face_path], "x", plan=one, cycles=0, canvas={"width": 192, "height": 128})


# -- the engine -----------------------------------------------------------------------------


class SpyPreserver(RegionReplacePreserver):
    name = "spy-several"
    description = "Records every replacement."
    calls: list = []

    def preserve(self, latents, condition, region):
        out = super().preserve(latents, condition, region)
        SpyPreserver.calls.append((latents.clone(), condition, region, out.clone()))
        return out


class SpyPlugin:
    @hookimpl
    def register_preservers(self, register):
        register(SpyPreserver)


@pytest.fixture
def spy_pipe(tiny_components):
    SpyPreserver.calls = []
    registry = build_registry(load_entry_points=False, extra_plugins=[SpyPlugin()])
    return SOWPipeline(tiny_components, {"preserver": "spy-several"}, registry=registry)


@pytest.mark.parametrize("layout", [TWO, THREE], ids=["two", "three"])
def test_every_region_is_reset_to_its_own_latent_at_every_step_and_nothing_else(spy_pipe, faces_dir, face_path, layout, monkeypatch):
    width, height, boxes = layout
    n = len(boxes)
    images = _faces(faces_dir, face_path)[:n]
    steps = []  # (level, trajectories of that run, latents before, latents after) per ctx.preserve
    original = RunContext.preserve

    def recording(self, latents, level):
        out = original(self, latents, level)
        steps.append((level, self.condition_trajectories, latents.clone(), out.clone()))
        return out

    monkeypatch.setattr(RunContext, "preserve", recording)
    result = spy_pipe(images, "friends", plan=_plan(width, height, boxes), seed=3, canvas={"width": width, "height": height}, **FAST)
    cfg = result.record.config
    assert [lv for lv, *_ in steps] == [lv for _ in range(cfg.cycles) for lv in (7, 6, 5)] + cfg.t3
    assert len(SpyPreserver.calls) == n * len(steps)  # one preserver call per region per step
    trajectories = steps[0][1]
    assert len(trajectories) == n
    vae = spy_pipe.components.vae
    for i, box in enumerate(boxes):  # each condition inverted on its own, at its own size, from its own encoding
        assert trajectories[i][0].shape[-2:] == (box[3] // 8, box[2] // 8)
        assert len(trajectories[i]) == cfg.t2 + 1
        fitted = load_condition(images[i]).image.resize((box[2], box[3]), Image.Resampling.LANCZOS)
        with torch.no_grad():
            own = vae.encode(pixels.to_tensor(fitted)).latent_dist.mode() * vae.config.scaling_factor
        assert torch.equal(trajectories[i][0], own)
        assert not torch.equal(trajectories[i][1], trajectories[i][0])  # inverted upward from there
    outside = torch.ones(1, 1, height // 8, width // 8, dtype=torch.bool)
    for box in boxes:
        outside[:, :, box[1] // 8 : (box[1] + box[3]) // 8, box[0] // 8 : (box[0] + box[2]) // 8] = False
    for k, (level, _, before, after) in enumerate(steps):
        calls = SpyPreserver.calls[k * n : (k + 1) * n]
        for i, (_, condition, region, _) in enumerate(calls):
            assert condition is trajectories[i][level]  # its own trajectory, that very level
            b = boxes[i]
            inside = after[:, :, b[1] // 8 : (b[1] + b[3]) // 8, b[0] // 8 : (b[0] + b[2]) // 8]
            assert torch.equal(inside, trajectories[i][level].expand_as(inside))
        mask = outside.expand_as(after)
        assert torch.equal(after[mask], before[mask])  # the preserver touched nothing outside the regions


def test_the_seeded_canvas_holds_every_condition_on_gray(tiny_pipe, faces_dir, face_path):
    width, height, boxes = THREE
    images = _faces(faces_dir, face_path)
    result = tiny_pipe(images, "friends", plan=_plan(width, height, boxes), seed=0, cycles=0, canvas={"width": width, "height": height})
    seeded = np.asarray(result.seeded_canvas).astype(int)
    rest = seeded.copy()
    for path, (x, y, w, h) in zip(images, boxes):
        loaded = load_condition(path).image  # large photos are brought under the size limit first
        fitted = np.asarray(loaded.resize((w, h), Image.Resampling.LANCZOS)).astype(int)
        assert np.array_equal(seeded[y : y + h, x : x + w], fitted)
        rest[y : y + h, x : x + w] = 128
    assert (rest == 128).all()
    # the run record lists each condition with its file's hash and its box as used
    assert [c.source for c in result.record.conditions] == [str(p) for p in images]
    assert [c.sha256 for c in result.record.conditions] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in images]
    assert [c.aligned_box_v.as_list() for c in result.record.conditions] == boxes


@pytest.mark.parametrize("n", [1, 2, 3])
def test_unet_calls_grow_by_t2_per_extra_condition(tiny_pipe, faces_dir, face_path, n, monkeypatch):
    unet = tiny_pipe.components.unet
    calls = []
    original = unet.forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", counting)
    width, height, boxes = THREE
    images = _faces(faces_dir, face_path)[:n]
    result = tiny_pipe(images if n > 1 else images[0], "x", plan=_plan(width, height, boxes[:n]), seed=0,
                       canvas={"width": width, "height": height}, cycles=2)
    # by hand: n conditions x 7 inversion steps, canvas 5, 2 cycles x 2 steps, final 5
    expected = n * 7 + 5 + 2 * 2 + 5
    assert len(calls) == expected == result.record.unet_evaluations
    assert tiny_pipe.unet_evaluations(result.record.config, RunInputs(conditions=n)) == expected
    assert calls.count(4) == 4  # background guidance: shared, once per cycle step, whatever n is


# -- the heuristic planner ------------------------------------------------------------------


def _request(images, width=768, height=512, prompt="two friends at a cafe"):
    from sow.stages import PlanRequest

    config = GenerationConfig(canvas={"width": width, "height": height})
    return PlanRequest(condition=images[0], prompt=prompt, config=config, conditions=images)


def test_several_photos_one_face_each_side_by_side(faces_dir):
    from sow.planners.heuristic import HeuristicPlanner
    from sow.planners.policy import plan_with_policy

    images = [Image.open(faces_dir / n).convert("RGB") for n in ("obama.jpg", "biden.jpg")]
    plan = plan_with_policy(HeuristicPlanner(), _request(images))
    assert [c.image for c in plan.conditions] == [0, 1]
    first, second = (c.box_v for c in plan.conditions)
    assert first.right < second.x  # side by side, left to right, apart
    assert first.w == 256 and first.h == 256  # max_side 256 fits twice on 768
    for c in plan.conditions:
        assert c.box_v.fits(plan.canvas) and c.box_v.aligned(8) == c.box_v and c.crop is not None
    assert plan.overlaps(8) == []


def test_a_group_photo_gives_every_face_largest_first_or_the_picked_ones(faces_dir):
    from sow.planners.heuristic import HeuristicPlanner

    group = [Image.open(faces_dir / "obama_and_biden.jpg").convert("RGB")]
    plan = HeuristicPlanner(max_people=3, detector="dlib").plan(_request(group))
    assert len(plan.conditions) == 3 and {c.image for c in plan.conditions} == {0}
    crops = [c.crop for c in plan.conditions]
    # placed in the photo's left-to-right order: Biden (x~740), Obama (x~1130), the girl (x~1600)
    assert [c.x for c in crops] == sorted(c.x for c in crops)
    assert "3 faces found" in plan.notes[0]
    two = HeuristicPlanner(max_people=2, detector="dlib").plan(_request(group))
    assert len(two.conditions) == 2 and all(c.crop.y < 700 for c in two.conditions)  # the two largest: the men
    picked = HeuristicPlanner(pick=[3], detector="dlib").plan(_request(group))
    assert len(picked.conditions) == 1 and picked.conditions[0].crop.y > 800  # number 3: the smallest, lower right
    with pytest.raises(InputError, match="the photo has 3 face"):
        HeuristicPlanner(pick=[4], detector="dlib").plan(_request(group))


def test_more_conditions_than_fit_is_an_input_error(face_path):
    from sow.planners.heuristic import HeuristicPlanner

    images = [Image.open(face_path).convert("RGB")] * 6
    with pytest.raises(InputError, match="6 conditions do not fit side by side on the 512x512 canvas"):
        HeuristicPlanner().plan(_request(images, 512, 512))


def test_a_planner_placing_one_condition_gets_the_side_by_side_layout(face_path):
    from sow.planners.fixed import FixedPlanner
    from sow.planners.policy import plan_with_policy

    images = [Image.open(face_path).convert("RGB")] * 2
    plan = plan_with_policy(FixedPlanner(), _request(images))
    assert [c.image for c in plan.conditions] == [0, 1] and plan.overlaps(8) == []
    assert any("placed 1 of 2 conditions" in r for r in plan.repairs)


def test_overlapping_answers_are_repaired_per_condition():
    from sow.planners.repair import repair_plan

    config = GenerationConfig(canvas={"width": 768, "height": 512})
    answer = {"conditions": [{"box_v": [100, 50, 300, 300], "box_r": [0, 0, 10, 10]},
                             {"box_v": [-40, 60, 200, 200], "box_r": [0, 300, 300, 300], "image": 1}],
              "prompt": "two friends"}
    plan = repair_plan(answer, config, images=2)
    assert plan.overlaps(8) == []
    assert any(r.startswith("condition 1: box_v") for r in plan.repairs)  # 300 > 256: scaled, recorded per condition
    assert any("overlap on the latent grid" in r for r in plan.repairs)
    # left-to-right order kept: condition 2 (further left in the answer) ends up on the left
    assert plan.conditions[1].box_v.x < plan.conditions[0].box_v.x


# -- the plan picture -----------------------------------------------------------------------


def test_the_plan_picture_draws_every_box_in_its_own_colour(face_path):
    plan = _plan(*TWO)
    seeded = Image.new("RGB", (192, 128), seeding.GRAY)
    drawn = plan_picture.draw_plan(plan, seeded)
    factor = drawn.width // seeded.width  # small canvases are shown upscaled so the labels read
    assert factor >= 2 and drawn.width == factor * seeded.width and drawn.height > factor * seeded.height  # legend below
    picture = np.asarray(drawn)
    for i, cond in enumerate(plan.conditions):
        color_v, _ = plan_picture.PLAN_COLORS[i]
        b = cond.box_v
        assert tuple(picture[(b.y + b.h // 2) * factor, b.x * factor]) == color_v  # the left edge of box_v


# -- the MLLM planners: one structured answer per box stage, fallback per condition ---------


def test_mllm_planner_asks_for_every_box_in_one_answer_and_falls_back_per_condition():
    from tests.planners.test_mllm_planner import ScriptedPlanner

    images = [Image.new("RGB", (300, 300), (120, 90, 80)), Image.new("RGB", (200, 300), (60, 90, 120))]
    replies = [
        '{"description": "a man; a woman", "prompt": "a man and a woman at a cafe"}',
        '{"boxes": [[40, 40, 240, 240], "left of the man"]}',  # the second box is unreadable
        '{"boxes": [[0, 280, 380, 232]]}',  # only one box_r
    ]
    planner = ScriptedPlanner(replies)
    plan = planner.plan(_request(images))
    asked = [m[-1]["content"][-1]["text"] for m in planner.asked]
    assert len(asked) == 3  # three stages, whatever the number of conditions
    assert "2 photos side by side" in asked[1] and '{"boxes": [[' in asked[1]
    assert "1: [40, 40, 240, 240]" in asked[2]
    assert plan.conditions[0].box_v.as_list() == [40, 40, 240, 240]
    assert any(r.startswith("condition 2: box_v") and "unreadable" in r for r in plan.repairs)
    assert any(r.startswith("condition 2: the answer gave no box_r") for r in plan.repairs)
    assert [c.image for c in plan.conditions] == [0, 1] and plan.overlaps(8) == []


# -- DAM with several conditions: the processor against the dense equations ---------------


def _cells(box, canvas_w, canvas_h, h, w):
    """Flat bool mask of the grid cells whose centres fall inside ``box`` (computed here, independently)."""
    out = torch.zeros(h * w, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            y, x = (r + 0.5) * canvas_h / h, (c + 0.5) * canvas_w / w
            out[r * w + c] = box.x <= x < box.right and box.y <= y < box.bottom
    return out


@pytest.mark.parametrize("gate", [{"use_gate": False}, {"tau": 0.05}])
def test_dam_with_three_conditions_matches_the_dense_equations(gate):
    from types import SimpleNamespace

    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from sow.attention import equations as mod
    from sow.attention.dam import DAMProcessor, DAMState
    from sow.engine.context import LatentRegion, Step

    W, H, h, w = 128, 96, 6, 8  # a non-square 8x6 attention grid, 16-pixel cells
    boxes_v = [Box(x=0, y=16, w=32, h=32), Box(x=48, y=0, w=32, h=32), Box(x=96, y=16, w=32, h=32)]
    boxes_r = [Box(x=0, y=48, w=64, h=48), Box(x=32, y=32, w=64, h=64), Box(x=80, y=48, w=48, h=48)]  # R overlap
    cfg = GenerationConfig.from_preset("normal", canvas={"width": W, "height": H}, trace_attention=True,
                                       modulation={"w_plus": 2.0, "w_minus": 1.0, **gate})
    plan = Plan(canvas=cfg.canvas, prompt="x", conditions=[{"image": i, "box_v": v, "box_r": r} for i, (v, r) in enumerate(zip(boxes_v, boxes_r))])
    regions = [LatentRegion.from_box(b, cfg.canvas, 8, torch.ones(1, 1, b.h // 8, b.w // 8)) for b in boxes_v]
    ctx = SimpleNamespace(config=cfg, plan=plan, regions=regions, region=regions[0], step=Step("cycle", 7, 3), trace=[], artifacts={})
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(2, h * w, 16) * 3
    attn.set_processor(DAMProcessor("t.attn1.processor", DAMState(ctx, 2**25), AttnProcessor2_0()))
    with torch.no_grad():
        got = attn(hidden)
        attn.set_processor(AttnProcessor2_0())
        plain = attn(hidden)
        # the equations literally, with an (N, N) bias
        s = cfg.modulation
        b, n, _ = hidden.shape
        q, k, v = (f(hidden).view(b, n, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        conds = [_cells(bv, W, H, h, w) for bv in boxes_v]
        union = conds[0] | conds[1] | conds[2]
        rng = (logits.amax(-1) - logits.amin(-1)).unsqueeze(-1)
        bias = torch.zeros(b, attn.heads, n, n)
        r_cs = []
        for i, (bv, br) in enumerate(zip(boxes_v, boxes_r)):
            rel = _cells(br, W, H, h, w) & ~union
            centre = bv.center
            dist = torch.tensor([(((t // w) + 0.5) * H / h - centre[1]) ** 2 + (((t % w) + 0.5) * W / w - centre[0]) ** 2 for t in range(n)], dtype=torch.float64).sqrt()
            rel_idx = torch.nonzero(rel).flatten()
            rel_idx = rel_idx[torch.argsort(dist[rel_idx], stable=True)]
            r_c = float(mod.relevance_gate(logits[:, :, torch.nonzero(conds[i]).flatten()], rel_idx, s.gate_fraction).mean())
            r_cs.append(r_c)
            factor = 1.0 if not s.use_gate else max(0.0, r_c - s.tau) ** 0.5
            minus = factor * s.w_minus * mod.time_decay(3, s.t_time, s.a_time_minus)
            g = mod.decay(dist * (s.t_dis / dist[rel_idx].max()), s.t_dis, s.a_dis).float()
            plus = factor * s.w_plus * mod.time_decay(3, s.t_time, s.a_time_plus) * g
            p_minus = -minus * (conds[i][:, None] & ~union[None, :]).float()  # C_i's queries, keys outside ALL conditions
            p_plus = plus[:, None] * (rel[:, None] & conds[i][None, :]).float()  # R_i's queries, keys of its own C_i only
            bias = bias + (p_minus + p_plus) * rng
        out = (torch.softmax(logits + bias, -1) @ v).transpose(1, 2).reshape(b, n, -1)
        expected = attn.to_out[1](attn.to_out[0](out))
    assert min(r_cs) > 0.05  # every gate open
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2
    assert ctx.trace[0]["r_c_conditions"] == [pytest.approx(r, abs=1e-5) for r in r_cs]


def test_several_bias_with_one_condition_is_the_single_condition_bias():
    from sow.attention import equations as mod
    from sow.attention.several import several_bias

    torch.manual_seed(1)
    logits = torch.randn(2, 12, 12)
    cq = torch.zeros(12, dtype=torch.bool)
    cq[:3] = True
    rq = torch.zeros(12, dtype=torch.bool)
    rq[3:7] = True
    plus = torch.rand(12)
    assert torch.allclose(several_bias(logits, [cq], [rq], [cq], [0.3], [plus]), mod.dam_bias(logits, cq, rq, cq, 0.3, plus))


def test_a_batch_of_images_with_three_conditions_gates_each_image_on_its_own(tiny_pipe, faces_dir, face_path):
    """tau = 0 opens every gate: image i of a batch equals the single run with seed + i (so each
    condition's gate is read per image, as for one condition), and the trace has a gate per
    condition and image."""
    width, height, boxes = THREE
    images = _faces(faces_dir, face_path)
    kw = dict(plan=_plan(width, height, boxes), canvas={"width": width, "height": height}, cycles=2,
              trace_attention=True, modulation={"tau": 0.0})
    batch = tiny_pipe(images, "x", seed=3, num_images=2, **kw)
    singles = [tiny_pipe(images, "x", seed=3 + i, **kw) for i in range(2)]
    for i, single in enumerate(singles):
        assert (batch.latents[i : i + 1] - single.latents).abs().max() < 1e-4, f"image {i}"
        assert any(r["fired"] for r in single.record.trace)
    assert not torch.equal(batch.latents[0], batch.latents[1])
    first = batch.record.trace[0]
    assert len(first["r_c_images"]) == 3 and all(len(per) == 2 for per in first["r_c_images"])
    assert [per[1] for per in first["r_c_images"]] == pytest.approx(singles[1].record.trace[0]["r_c_conditions"], abs=1e-5)


def test_a_cached_plan_of_several_conditions_is_read_back(faces_dir, tmp_path):
    """The plan cache serves a several-condition plan again (the cached plan's image indices are
    checked against every image of the request, not against one)."""
    from sow.planners.cache import PlanCache
    from sow.planners.heuristic import HeuristicPlanner
    from sow.planners.policy import plan_with_policy

    calls = []

    class Counting(HeuristicPlanner):
        name = "counting"
        cacheable = True

        def plan(self, request):
            calls.append(1)
            return super().plan(request)

    images = [load_condition(faces_dir / n).image for n in ("obama.jpg", "biden.jpg")]
    cache = PlanCache(tmp_path)
    first = plan_with_policy(Counting(), _request(images), cache=cache)
    again = plan_with_policy(Counting(), _request(images), cache=cache)
    assert len(calls) == 1 and again.notes[-1].startswith("read from the plan cache")
    assert again.conditions == first.conditions and [c.image for c in again.conditions] == [0, 1]
