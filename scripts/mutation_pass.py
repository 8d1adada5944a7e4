"""A small mutation pass: change one thing in a module, run that module's tests, see if they notice.

Not part of CI (it runs the tests once per mutant). Usage::

    OMP_NUM_THREADS=1 python scripts/mutation_pass.py                 # every module below
    OMP_NUM_THREADS=1 python scripts/mutation_pass.py sow/engine/scheduling.py --limit 10

Mutations, one at a time, made on the AST (so the file always parses): comparison operators
(``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``), arithmetic (``+`` <-> ``-``,
``*`` <-> ``/``, ``**`` -> ``*``), number constants (int n -> n + 1, float x -> 1.5 x, 0.0 -> 1.0),
``and`` <-> ``or``, a dropped ``not``; plus the hand-written mutations of a wrong method listed
in ``NAMED`` (issue 12's list). Numbers inside strings and docstrings are left alone. Mutants
whose source equals the original after unparsing are not run. ``--limit`` samples the AST
mutants of each module (seeded), the named ones always run.

Each mutant is written over the module (restored afterwards, also on Ctrl-C), and the module's
test subset in ``TARGETS`` runs with ``-x``; a failing (or timed-out) run kills it. By default
the tests run in a child forked from one process that has already imported torch, diffusers
and sow and built the tiny model (the child reloads the mutated module and the modules that
imported names from it): seconds per mutant instead of a minute. ``--subprocess`` runs a fresh
interpreter per mutant instead (slow, but nothing is shared). The report
lists the kill rate per module and every survivor (line and change), as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS: dict[str, list[str]] = {
    "sow/engine/diffusion_math.py": ["tests/engine/test_diffusion_math.py", "tests/engine/test_method_oracle.py"],
    "sow/engine/scheduling.py": [
        "tests/engine/test_cyclic_schedule.py", "tests/engine/test_method_oracle.py", "tests/engine/test_scheduler_count.py::test_cyclic_count_by_hand",
    ],
    "sow/engine/denoiser.py": ["tests/engine/test_method_oracle.py"],
    "sow/engine/noise_schedule.py": ["tests/engine/test_seams.py", "tests/engine/test_method_oracle.py", "tests/engine/flow/test_flow_cow_run.py"],
    "sow/engine/transitions.py": ["tests/engine/test_seams.py", "tests/engine/test_method_oracle.py", "tests/engine/flow/test_flow_cow.py"],
    "sow/engine/parameterization.py": ["tests/engine/test_seams.py", "tests/engine/test_v_prediction.py", "tests/engine/flow/test_flow_oracle.py"],
    "sow/attention/equations.py": ["tests/attention/test_modulation.py"],
    "sow/planners/repair.py": ["tests/planners/test_plan_repair.py", "tests/planners/test_repair_thresholds.py"],
    "sow/planners/policy.py": ["tests/planners/test_plan_repair.py", "tests/planners/test_make_plan.py"],
    "sow/batch/runner.py": [
        "tests/batch/test_oracle_sharding.py", "tests/batch/test_batch_errors.py", "tests/batch/test_batch.py", "-k", "not sigkill and not cli",
    ],  # in-process
    # last round's modules (issue 23); "--without test_oracle_" gives the column of main's tests
    "sow/models/families.py": ["tests/models/test_oracle_sdxl.py", "tests/models/test_families.py", "-k", "not architecture and not host"],
    "sow/models/lora.py": ["tests/models/test_oracle_lora.py", "tests/models/test_lora.py"],
    "sow/attention/regions.py": ["tests/attention/test_oracle_several_dam.py", "tests/test_several_people.py", "-k", "dam or bias or gates"],
    "sow/planners/layout.py": ["tests/planners/test_oracle_layouts.py", "tests/test_several_people.py", "-k", "not dam and not gates and not reset and not grow"],
    "sow/batch/workers.py": ["tests/batch/test_oracle_sharding.py", "tests/batch/test_scale_out.py", "-k", "not torchrun and not ray"],
    "sow/diffusers_style.py": ["tests/test_oracle_batches.py", "tests/test_diffusers_face.py", "-k", "not offload and not from_pipe"],
    "sow/engine/conditions.py": ["tests/test_oracle_batches.py", "tests/attention/test_oracle_several_dam.py"],
    "sow/pipeline.py": ["tests/test_oracle_batches.py", "tests/test_diffusers_face.py", "tests/test_several_people.py", "-k", "batch or generator or images"],
    "sow/planners/toolkit/decoding.py": ["tests/planners/test_mllm_constrained.py", "-k", "budget or accents"],  # the schema's bounds, no model
    # issue 28: the modules that moved or were made one
    "sow/geometry.py": ["tests/test_geometry.py", "tests/planners/test_plan_repair.py", "tests/planners/test_hand_made_boxes.py", "tests/planners/test_oracle_layouts.py"],
    "sow/engine/seeding.py": ["tests/engine/test_readings.py", "-k", "mask or seed_background or cell"],
    "sow/faces.py": ["tests/test_faces.py", "tests/planners/test_heuristic.py", "-m", "slow or not slow"],
}
"""Module -> the tests that cover it (a small, targeted subset: each mutant runs them)."""

NAMED: dict[str, list[tuple[str, str, str]]] = {
    "sow/engine/scheduling.py": [
        ("noise injection to one level below t2", "denoiser.schedule.inject(x, low, high, ctx.noise_like(x))", "denoiser.schedule.inject(x, low, high - 1, ctx.noise_like(x))"),
        ("cycle denoise starts one level low", "range(cfg.t2, cfg.t1, -1)", "range(cfg.t2 - 1, cfg.t1, -1)"),
        ("no reset at t3", "if level in cfg.t3:", "if level in cfg.t3 and False:"),
    ],
    "sow/engine/noise_schedule.py": [
        ("noise injected from high to low (levels swapped)", "tr.inject_noise(x, self.levels[low], self.levels[high], noise)", "tr.inject_noise(x, self.levels[high], self.levels[low], noise)"),
    ],
    "sow/engine/denoiser.py": [
        (
            "background-guidance prompts swapped",
            'self._unet(latents, level, ["negative", "prompt", "suppress", "diverse"])',
            'self._unet(latents, level, ["negative", "prompt", "diverse", "suppress"])',
        ),
        (
            "inversion guided by the negative prompt",
            'uncond, text = self._unet(latents, level, ["empty", "prompt"])',
            'uncond, text = self._unet(latents, level, ["negative", "prompt"])',
        ),
        (
            "inversion evaluates the model at t_level (same as the step down)",
            "output = self.predict(latents, level + 1, step)",
            "output = self.predict(latents, max(level, 1), step)",
        ),
        (
            "denoising evaluates the model at t_(level-1)",
            "output = self.predict(latents, level, step)",
            "output = self.predict(latents, max(level - 1, 1), step)",
        ),
    ],
    "sow/planners/repair.py": [
        ("MIN_BOX_SIDE moved", "MIN_BOX_SIDE = 8", "MIN_BOX_SIDE = 4"),
        ("rescale tolerance moved", "if abs(target - longer) > 0.5:", "if abs(target - longer) > 2:"),
        ("box_r emptiness threshold moved", "if right - left < 1 or bottom - top < 1:", "if right - left < 8 or bottom - top < 8:"),
    ],
    # issue 23: plausible wrong readings of last round's modules
    "sow/batch/runner.py": [
        ("--overwrite removes a live sibling's part", "        if run_of(part) != own:\n            part.unlink(missing_ok=True)", "        if True:\n            part.unlink(missing_ok=True)"),
        ("a sibling's part counts as an earlier batch", "        if own is None or run_of(part) != own:\n            return part", "        if True:\n            return part"),
    ],
    "sow/models/families.py": [
        ("SDXL encoders' hidden states in the wrong order", "context = torch.cat(hidden, dim=-1)", "context = torch.cat(hidden[::-1], dim=-1)"),
        ("the last hidden layer instead of the penultimate", "out.hidden_states[-2] if", "out.hidden_states[-1] if"),
        ("the first encoder's pooled output", "pooled = out[0] if family.pooled else None", "pooled = pooled if pooled is not None else out.pooler_output"),
        ("the empty prompt encoded, not zeroed", "        if family.zero_empty_prompt:", "        if False:"),
        ("time_ids as (width, height)", "[[height, width, 0, 0, height, width]]", "[[width, height, 0, 0, width, height]]"),
        ("every branch gets the last branch's pooled embedding", "torch.cat([p.to(dtype).expand(batch, -1) for p in pooled])", "torch.cat([pooled[-1].to(dtype).expand(batch, -1) for p in pooled])"),
    ],
    "sow/models/lora.py": [
        ("LoRA scales ignored", "adapter_weights=all_scales)", "adapter_weights=[1.0] * len(all_scales))"),
        ("LoRA scales given to the other LoRA", "adapter_weights=all_scales)", "adapter_weights=all_scales[::-1])"),
        ("LoRA scale applied twice", "adapter_weights=all_scales)", "adapter_weights=[s * s for s in all_scales])"),
    ],
    "sow/attention/regions.py": [
        ("P- keys: outside the first condition only", "background_keys=(~union).float()", "background_keys=(~masks[0]).float()"),
        ("R_i keeps the other people's faces", "flatten() & ~union", "flatten() & ~masks[len(related)]"),
        ("every g_dis and gate order from the first person's centre", "distance = cell_distances(box.center,", "distance = cell_distances(condition_boxes[0].center,"),
    ],
    "sow/planners/layout.py": [
        ("the relaxed size limit only from three people", "if conditions <= 1:", "if conditions <= 2:"),
        ("no gap at the canvas edges", "room = floor_to_grid((canvas.width - GAP * (n + 1)) / n, GRID)", "room = floor_to_grid((canvas.width - GAP * (n - 1)) / n, GRID)"),
        ("boxes at the left of their share, not centred", "centre = (k + 0.5) * canvas.width / n", "centre = k * canvas.width / n + side / 2"),
    ],
    "sow/batch/workers.py": [
        ("sharding by the local rank", "return cls(rank=rank, world_size=world, local_rank=local, run_id=run)", "return cls(rank=local, world_size=world, local_rank=local, run_id=run)"),
        ("parts named by the local rank (two nodes share one)", 'rank{self.rank:04d}-of-', 'rank{self.local_rank:04d}-of-'),
    ],
    "sow/engine/conditions.py": [
        ("a seed-dependent background shared by the batch", "readings.seed_background, seed + i)", "readings.seed_background, seed)"),
    ],
    "sow/diffusers_style.py": [
        ("a list of generators seeds from the last", "seed = generators[0].initial_seed()", "seed = generators[-1].initial_seed()"),
    ],
    "sow/planners/toolkit/decoding.py": [
        ("one comma too many in an object's length", "return 2 + sum(fields) + max(0, len(fields) - 1)", "return 2 + sum(fields) + len(fields)"),
        ("box bounds with width and height swapped", "sides = [(0, canvas.width), (0, canvas.height), (1, canvas.width), (1, canvas.height)]", "sides = [(0, canvas.height), (0, canvas.width), (1, canvas.height), (1, canvas.width)]"),
        ("the text sized before the structure is counted", "left = max(0, max_tokens - longest_answer(schema)) // width", "left = max(0, max_tokens) // width"),
    ],
    "sow/pipeline.py": [
        ("images counted from the generators (issue 23's defect)", "            num_images=call.num_images,\n            denoiser=denoiser,", "            num_images=len(generators),\n            denoiser=denoiser,"),
        ("sampled VAE latents all from the first generator", "sampler = generators[min(i, len(generators) - 1)]", "sampler = generators[0]"),
    ],
}
"""Module -> (label, exact text, replacement): the wrong methods of issues 12 and 23, each must be killed."""

_SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult}


@dataclass
class Mutant:
    module: str
    line: int
    label: str
    source: str
    killed: bool | None = None
    seconds: float = 0.0


def _in_strings(tree: ast.AST) -> set[int]:
    """ids of nodes inside f-strings (messages) and docstrings."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def ast_mutants(module: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    baseline = ast.unparse(tree)
    skip = _in_strings(tree)
    candidates: list[tuple[int, int, str]] = []  # (node index, variant, label)
    nodes = list(ast.walk(tree))
    for i, node in enumerate(nodes):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for j, op in enumerate(node.ops):
                if type(op) in _SWAP_CMP:
                    candidates.append((i, j, f"{type(op).__name__} -> {_SWAP_CMP[type(op)].__name__}"))
        elif isinstance(node, ast.BinOp) and type(node.op) in _SWAP_BIN:
            candidates.append((i, 0, f"{type(node.op).__name__} -> {_SWAP_BIN[type(node.op)].__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
            candidates.append((i, 0, f"constant {node.value!r} changed"))
        elif isinstance(node, ast.BoolOp):
            candidates.append((i, 0, f"{type(node.op).__name__} -> {'Or' if isinstance(node.op, ast.And) else 'And'}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            candidates.append((i, 0, "not dropped"))
    mutants = []
    for i, j, label in candidates:
        mutated = copy.deepcopy(tree)
        node = list(ast.walk(mutated))[i]
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            node.ops[j] = _SWAP_CMP[type(node.ops[j])]()
        elif isinstance(node, ast.BinOp):
            node.op = _SWAP_BIN[type(node.op)]()
        elif isinstance(node, ast.Constant):
            v = node.value
            node.value = v + 1 if isinstance(v, int) else (1.0 if v == 0 else v * 1.5)
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.UnaryOp):
            parent_fix = _replace_child(mutated, node, node.operand)
            if not parent_fix:
                continue
        text = ast.unparse(mutated)
        if text != baseline:
            mutants.append(Mutant(module, line, label, text + "\n"))
    return mutants


def _replace_child(tree: ast.AST, old: ast.AST, new: ast.AST) -> bool:
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return True
            if isinstance(value, list) and old in value:
                value[value.index(old)] = new
                return True
    return False


def named_mutants(module: str, source: str) -> list[Mutant]:
    out = []
    for label, old, new in NAMED.get(module, []):
        if source.count(old) != 1:
            raise SystemExit(f"{module}: the named mutation {label!r} no longer matches the source exactly once")
        line = source[: source.index(old)].count("\n") + 1
        out.append(Mutant(module, line, f"[named] {label}", source.replace(old, new)))
    return out


RELOAD_AFTER: dict[str, list[str]] = {
    "sow/engine/diffusion_math.py": [],  # used as `dm.<name>` everywhere: the reload is seen
    "sow/engine/scheduling.py": [],  # the registry imports it by name on every build
    "sow/engine/denoiser.py": ["sow.models.performance", "sow.pipeline"],
    "sow/attention/equations.py": ["sow.attention.regions", "sow.attention.modulation", "sow.attention.observer", "sow.attention.dam"],
    "sow/planners/repair.py": ["sow.planners.policy", "sow.planners.fixed", "sow.planners.heuristic", "sow.planners.mllm.base"],
    "sow/planners/policy.py": ["sow.pipeline"],
    "sow/batch/runner.py": ["sow.cli.batch"],
    "sow/models/families.py": [],  # its names in sow.models.loading and sow.engine.denoiser: rebound (see _rebind)
    "sow/models/lora.py": [],  # imported inside load_components
    "sow/attention/regions.py": ["sow.attention.modulation", "sow.attention.observer", "sow.attention.dam"],
    "sow/planners/layout.py": ["sow.planners.heuristic"],
    "sow/batch/workers.py": ["sow.batch.runner", "sow.cli.batch"],
    "sow/diffusers_style.py": [],  # used as `diffusers_style.<name>`
    "sow/pipeline.py": [],
    "sow/engine/conditions.py": [],  # its names elsewhere: rebound (see _rebind)
    "sow/planners/toolkit/decoding.py": ["sow.planners.toolkit", "sow.planners.mllm.base"],
}
"""Modules that ``from <mutated> import ...``: reloaded after it in the forked child."""

_WARM = False


def _warm_up() -> None:
    """Import what the tests import and build the tiny model once; children share it."""
    global _WARM
    if _WARM:
        return
    sys.path.insert(0, str(ROOT))
    import sow.cli.commands  # noqa: F401  (imports most of sow)
    import sow.models.loading as models
    import sow.pipeline  # noqa: F401

    built: dict[str, object] = {}
    real = models.load_components

    def load_components(spec="tiny", **kwargs):
        if spec == "tiny" and not kwargs:
            if "tiny" not in built:
                built["tiny"] = real("tiny")
            return built["tiny"]
        return real(spec, **kwargs)

    models.load_components = load_components
    load_components("tiny")
    _WARM = True


def _rebind(dotted: str) -> None:
    """Point every ``from <dotted> import Name`` of the loaded sow modules at the reloaded module's objects."""
    new = sys.modules[dotted]
    for mod in list(sys.modules.values()):
        if mod is None or mod is new or not getattr(mod, "__name__", "").startswith("sow"):
            continue
        for attr, value in list(vars(mod).items()):
            if getattr(value, "__module__", None) == dotted and getattr(value, "__qualname__", None) == attr and hasattr(new, attr):
                setattr(mod, attr, getattr(new, attr))


def run_forked(module: str, tests: list[str], timeout: float) -> bool:
    """True when the tests fail (the mutant is killed), run in a forked child."""
    import importlib
    import signal

    _warm_up()
    pid = os.fork()
    if pid == 0:  # the child: reload the mutated module (and its importers), run pytest, exit
        code = 3
        try:
            os.chdir(ROOT)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            name = module.removesuffix(".py").replace("/", ".")
            for dotted in [name, *RELOAD_AFTER.get(module, [])]:
                importlib.reload(importlib.import_module(dotted))
                _rebind(dotted)
            import pytest

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-m", "slow or not slow", *tests]))
        except BaseException:  # a mutant that breaks the import counts as killed
            code = 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) != 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return True
        time.sleep(0.2)


def run_tests(tests: list[str], timeout: float) -> bool:
    """True when the tests fail (the mutant is killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-m", "slow or not slow", *tests]
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(TARGETS))
    parser.add_argument("--limit", type=int, default=0, help="sample this many AST mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--subprocess", action="store_true", help="a fresh interpreter per mutant (slow)")
    parser.add_argument("--survivors", type=Path, help="rerun only the mutants that survived in this earlier --json")
    parser.add_argument("--without", default=None, help="leave out the test files whose path holds this text (e.g. test_oracle_: main's tests only)")
    args = parser.parse_args()
    if args.without:
        for module, tests in TARGETS.items():
            TARGETS[module] = [t for t in tests if args.without not in t]

    results: list[Mutant] = []
    for module in args.modules:
        path = ROOT / module
        original = path.read_text()
        def check(module=module) -> bool:
            if args.subprocess:
                return run_tests(TARGETS[module], args.timeout)
            return run_forked(module, TARGETS[module], args.timeout)

        if check():
            raise SystemExit(f"{module}: its tests fail without any mutation; fix them first")
        mutants = ast_mutants(module, original)
        if args.limit and len(mutants) > args.limit:
            mutants = random.Random(args.seed).sample(mutants, args.limit)
        mutants = named_mutants(module, original) + sorted(mutants, key=lambda m: m.line)
        if args.survivors:
            earlier = json.loads(args.survivors.read_text())
            wanted = {(r["line"], r["label"]) for r in earlier if r["module"] == module and not r["killed"]}
            mutants = [m for m in ast_mutants(module, original) + named_mutants(module, original) if (m.line, m.label) in wanted]
        try:
            for mutant in mutants:
                path.write_text(mutant.source)
                start = time.perf_counter()
                mutant.killed = check()
                mutant.seconds = round(time.perf_counter() - start, 1)
                mark = "killed " if mutant.killed else "SURVIVED"
                print(f"{mark} {module}:{mutant.line} {mutant.label} ({mutant.seconds} s)", flush=True)
                results.append(mutant)
        finally:
            path.write_text(original)

    print()
    for module in args.modules:
        ran = [m for m in results if m.module == module]
        if ran:
            killed = sum(m.killed for m in ran)
            print(f"{module}: {killed}/{len(ran)} killed ({100 * killed / len(ran):.0f}%)")
    if args.json:
        rows = [{k: getattr(m, k) for k in ("module", "line", "label", "killed", "seconds")} for m in results]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(m.killed for m in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
