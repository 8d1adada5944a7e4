"""Several-person DAM in a real run against a dense reference written here (issue 23).

A run with two people on the tiny model records, at every self-attention layer (a forward
hook on diffusers' ``Attention`` module: whatever processor sow installs), the layer's input
and output during the cycle phase, and the step each call belongs to (the run's progress
callback). The reference recomputes each output from the layer's own projections with the
equations of docs/modulation.md ("Several conditions") written out densely in float64, with
its regions and key sets built from the plan's boxes (the grid cells whose centres fall in a
box), never from sow's region objects:

    C_i = cells in box_v_i,  U = C_1 ∪ ... ∪ C_n,  R_i = cells in box_r_i minus U
    R_c^i  = per head and branch: rows of C_i min-max normalised over all keys, averaged over
             C_i; the k = ceil(m / 5) cells of R_i closest to box_v_i's centre over all m;
             averaged over heads and the image's branches
    A' = A + sum_i sqrt(max(0, R_c^i - tau)) (P-_i + P+_i) range_row(A)
    P-_i = -w- g_time(cycle; a-)            on (q in C_i, k not in U)
    P+_i = +w+ g_time(cycle; a+) g_dis_i(q) on (q in R_i, k in C_i)

Exactly two people, once with separate related regions and once with person 1's box_r
covering person 2's face (so R_1 must leave C_2 out, and C_2's keys are no "outside" for C_1).
"""

from __future__ import annotations

import math

import pytest
import torch

from sow.schemas import Plan

W, H = 128, 64  # an 8x16 latent grid; attention at 8x16 and 4x8
LAYOUTS = {
    "two people, separate box_r": ([[8, 8, 32, 32], [80, 8, 40, 32]], [[0, 40, 56, 24], [72, 40, 56, 24]]),
    "box_r of person 1 covers person 2's face": ([[8, 8, 32, 32], [80, 8, 40, 32]], [[0, 0, 128, 64], [64, 40, 64, 24]]),
}
MODULATION = {"tau": 0.0, "w_plus": 2.0, "w_minus": 1.0}  # always open, strong enough to see


def _cells(box, h: int, w: int) -> torch.Tensor:
    """(h*w,) bool: grid cells whose centre lies in ``box`` = [x, y, bw, bh] (canvas pixels)."""
    x, y, bw, bh = box
    out = torch.zeros(h * w, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            cy, cx = (r + 0.5) * H / h, (c + 0.5) * W / w
            out[r * w + c] = x <= cx < x + bw and y <= cy < y + bh
    return out


def _distances(box, h: int, w: int) -> torch.Tensor:
    ox, oy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return torch.tensor([math.hypot((t % w + 0.5) * W / w - ox, (t // w + 0.5) * H / h - oy) for t in range(h * w)], dtype=torch.float64)


def _g(x: float, horizon: float, exponent: float) -> float:
    x = min(max(x, 0.0), horizon)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (2 * horizon - x) / horizon))) ** exponent


def _grid(tokens: int) -> tuple[int, int]:
    h, w = H // 8, W // 8
    while h * w > tokens:
        h, w = -(-h // 2), -(-w // 2)
    assert h * w == tokens
    return h, w


def reference_output(attn, hidden: torch.Tensor, boxes_v, boxes_r, cycle: int, s, images: int = 1) -> tuple[torch.Tensor, list[float]]:
    """The layer's output with several-condition DAM, densely in float64; and each condition's gate (image 0)."""
    b, n, _ = hidden.shape
    h, w = _grid(n)
    x = hidden.double()

    def heads(linear):
        out = torch.nn.functional.linear(x, linear.weight.double(), None if linear.bias is None else linear.bias.double())
        return out.view(b, n, attn.heads, -1).transpose(1, 2)

    q, k, v = heads(attn.to_q), heads(attn.to_k), heads(attn.to_v)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    spread = (logits.amax(-1) - logits.amin(-1)).unsqueeze(-1)
    normalized = (logits - logits.amin(-1, keepdim=True)) / (logits.amax(-1, keepdim=True) - logits.amin(-1, keepdim=True))
    conditions = [_cells(box, h, w) for box in boxes_v]
    union = torch.stack(conditions).any(0)
    bias = torch.zeros(b, attn.heads, n, n, dtype=torch.float64)
    gates = []
    for c_i, box_v, box_r in zip(conditions, boxes_v, boxes_r):
        r_i = _cells(box_r, h, w) & ~union
        dist = _distances(box_v, h, w)
        related = sorted(torch.nonzero(r_i).flatten().tolist(), key=lambda t: (dist[t].item(), t))
        m = len(related)
        closest = math.ceil(m * s.gate_fraction - 1e-9)
        mean = normalized[:, :, c_i].mean(2)[..., related]  # (b, heads, m)
        ratio = (mean[..., :closest].sum(-1) / mean.sum(-1)).mean(1)  # (b,): mean over heads
        r_c = ratio.view(-1, images).mean(0)  # per image, over its branches
        gates.append(float(r_c[0]))
        factor = (r_c - s.tau).clamp_min(0).sqrt().repeat(b // images)[:, None, None, None]
        far = max(dist[t].item() for t in related)
        g_dis = torch.zeros(n, dtype=torch.float64)
        for t in related:
            g_dis[t] = _g(s.t_dis * dist[t].item() / far, s.t_dis, s.a_dis)
        minus = s.w_minus * _g(cycle, s.t_time, s.a_time_minus)
        plus = s.w_plus * _g(cycle, s.t_time, s.a_time_plus)
        p_minus = -minus * (c_i[:, None] & ~union[None, :]).double()
        p_plus = plus * g_dis[:, None] * (r_i[:, None] & c_i[None, :]).double()
        bias = bias + factor * (p_minus + p_plus) * spread
    out = torch.softmax(logits + bias, -1) @ v
    out = out.transpose(1, 2).reshape(b, n, -1)
    linear = attn.to_out[0]
    out = torch.nn.functional.linear(out, linear.weight.double(), None if linear.bias is None else linear.bias.double())
    return out.float(), gates


def record_cycle_attention(pipe, conditions, plan, **call):
    """Run ``pipe`` and keep (layer, cycle, module, input, output) of every self-attention call of the cycle phase."""
    modules = {name: m for name, m in pipe.components.unet.named_modules() if name.endswith("attn1")}
    pending, kept = [], []

    def hook(name):
        def record(module, args, kwargs, output):
            pending.append((name, module, (args[0] if args else kwargs["hidden_states"]).clone(), output.clone()))
        return record

    def on_evaluation(info):
        if info["phase"] == "cycle":
            kept.extend((name, info["cycle"], module, x, y) for name, module, x, y in pending)
        pending.clear()

    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in modules.items()]
    try:
        output = pipe(conditions, plan.prompt, plan=plan, callback=on_evaluation, **call)
    finally:
        for handle in handles:
            handle.remove()
    return output, kept


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_person_dam_in_a_run_equals_the_dense_reference(tiny_pipe, faces_dir, face_path, layout):
    boxes_v, boxes_r = LAYOUTS[layout]
    plan = Plan(canvas={"width": W, "height": H}, prompt="two friends at a cafe",
                conditions=[{"image": i, "box_v": v, "box_r": r} for i, (v, r) in enumerate(zip(boxes_v, boxes_r))])
    output, calls = record_cycle_attention(
        tiny_pipe, [face_path, faces_dir / "biden.jpg"], plan, seed=4, canvas={"width": W, "height": H}, cycles=2,
        modulation=MODULATION, trace_attention=True, output_type="latent")
    s = output.record.config.modulation
    assert s.dis_units == "box_r" and s.use_gate and s.use_p_plus and s.use_p_minus
    cfg = output.record.config
    layers = {name for name, *_ in calls}
    assert len(calls) == len(layers) * cfg.cycles * (cfg.t2 - cfg.t1) and {c for _, c, *_ in calls} == {0, 1}
    traced = iter(r for r in output.record.trace)
    moved = 0.0
    for name, cycle, module, hidden, got in calls:
        with torch.no_grad():
            expected, gates = reference_output(module, hidden, boxes_v, boxes_r, cycle, s)
            plain, _ = reference_output(module, hidden, boxes_v, boxes_r, cycle, s.model_copy(update={"w_plus": 0.0, "w_minus": 0.0}))
        assert (got - expected).abs().max() < 1e-4, f"{name} at cycle {cycle}"
        moved = max(moved, float((expected - plain).abs().max()))
        record = next(traced)
        assert record["r_c_conditions"] == pytest.approx(gates, abs=1e-5), name
    assert moved > 1e-2  # DAM changed the layers' outputs: the comparison is not of plain attention


# -- a mask per image in a several-people run ------------------------------------------------


def _unet_inputs_at_first_cycle_step(pipe, images, plan, masks):
    """The seeded canvas and the latents the UNet receives at the first cycle step (a forward pre-hook)."""
    seen = []
    handle = pipe.components.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        out = pipe(images, plan.prompt, plan=plan, mask=masks, seed=1, canvas={"width": W, "height": H}, cycles=1,
                   output_type="latent")
    finally:
        handle.remove()
    cfg = out.record.config
    first_cycle = len(plan.conditions) * cfg.t2 + cfg.t1  # after every inversion (conditions, then the canvas)
    return out.seeded_canvas, seen[first_cycle][0]  # the negative branch's copy of the latents


def test_each_image_keeps_its_own_mask_in_a_several_people_run(tiny_pipe):
    """Two solid photos, the plan naming them in swapped order (condition 1 is image 2): image 1's
    mask (its left half kept) shapes only the condition made from image 1. The seeded canvas is
    written out here pixel by pixel; in the latents the UNet receives, the other condition's
    region is exactly what it is without any mask."""
    import numpy as np
    from PIL import Image

    red, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 220))
    left_half = Image.new("L", (64, 64), 0)
    left_half.paste(255, (0, 0, 32, 64))
    boxes = [[8, 8, 48, 48], [72, 8, 48, 48]]
    plan = Plan(canvas={"width": W, "height": H}, prompt="two friends at a cafe", conditions=[
        {"image": 1, "box_v": boxes[0], "box_r": [0, 56, 64, 8]},  # blue, unmasked
        {"image": 0, "box_v": boxes[1], "box_r": [64, 56, 64, 8]},  # red, its left half kept
    ])
    seeded, latents = _unet_inputs_at_first_cycle_step(tiny_pipe, [red, blue], plan, [left_half, None])
    expected = np.full((H, W, 3), 128, dtype=np.int16)
    expected[8:56, 8:56] = (30, 30, 220)  # condition 1: all of image 2
    expected[8:56, 72:96] = (220, 30, 30)  # condition 2: image 1's kept left half (24 of 48 px) ...
    assert np.abs(np.asarray(seeded, dtype=np.int16) - expected).max() <= 1  # ... the rest gray
    _, unmasked = _unet_inputs_at_first_cycle_step(tiny_pipe, [red, blue], plan, None)
    blue_cells = (slice(None), slice(1, 7), slice(1, 7))
    red_cells = (slice(None), slice(1, 7), slice(9, 15))
    assert torch.equal(latents[blue_cells], unmasked[blue_cells])  # image 2 has no mask: its region is untouched
    assert (latents[red_cells] - unmasked[red_cells]).abs().max() > 1e-2  # image 1's mask took effect
