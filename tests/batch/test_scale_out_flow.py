"""Scale-out on a flow family (issue 25): a tiny FLUX.1 batch on two torchrun ranks and on two Ray actors
gives, byte for byte, the images of one process (the UNet version: tests/batch/test_scale_out.py, whose helpers
these reuse). Slow: every worker builds its own tiny-flux (~10 s on a busy CPU) before its items."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sow.batch.runner import Manifest, read_batch_file, run_batch
from sow.batch.workers import part_files
from tests.batch.test_scale_out import REPO, _digests, _done_counts, _env, _jobs

FLOW_FAST = {"canvas": {"width": 128, "height": 128}, "cycles": 1}
FLOW_JOBS = 4


@pytest.fixture(scope="module")
def flow_batch(tmp_path_factory, face_path):
    root = tmp_path_factory.mktemp("scale-flow")
    jobs = _jobs(root / "jobs.jsonl", face_path, FLOW_JOBS)
    config = root / "fast.json"
    config.write_text(json.dumps(FLOW_FAST))
    return root, jobs, config


@pytest.fixture(scope="module")
def flow_reference(flow_batch):
    """The single-process batch on tiny-flux, one torch thread (as every worker here uses)."""
    import torch

    from sow.pipeline import SOWPipeline

    root, jobs, _ = flow_batch
    out = root / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_batch(SOWPipeline.from_pretrained("tiny-flux"), read_batch_file(jobs), out, overrides=FLOW_FAST)
    finally:
        torch.set_num_threads(threads)
    assert summary.done == FLOW_JOBS
    digests = _digests(out)
    assert len({digests[f"job{i}.png"] for i in range(FLOW_JOBS)}) == FLOW_JOBS  # four prompts and seeds, four images
    return digests


@pytest.mark.slow
def test_torchrun_two_ranks_on_tiny_flux_match_one_process(flow_batch, flow_reference):
    root, jobs, config = flow_batch
    out = root / "torchrun"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "sow", "generate", "--batch", str(jobs), "--config", str(config), "-o", str(out), "--quiet",
            "--model", "tiny-flux"]
    proc = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2" in proc.stderr and "rank 1 of 2" in proc.stderr
    assert _digests(out) == flow_reference
    assert _done_counts(out) == {f"job{i}": 1 for i in range(FLOW_JOBS)}
    assert part_files(out) == []
    ranks = {e["id"]: e["worker"] for e in Manifest(out).entries() if e.get("event") == "start"}
    assert len(set(ranks.values())) == 2  # the work was really split over two processes
    records = [json.loads(p.read_text()) for p in sorted(out.glob("job*.json"))]
    assert records and {r["family"] for r in records} == {"flux1"}


@pytest.mark.slow
def test_ray_two_actors_on_tiny_flux_match_one_process(flow_batch, flow_reference):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'sow[ray]')")
    from sow.batch.ray_engine import RaySettings, connect, run_batch_on_ray
    from sow.pipeline import PipelineSpec

    root, jobs, _ = flow_batch
    out = root / "ray"
    settings = RaySettings(workers=2)
    connect(settings)
    try:
        events = []
        summary = run_batch_on_ray(PipelineSpec(model="tiny-flux", device="cpu", threads=1), read_batch_file(jobs), out, settings,
                                   overrides=FLOW_FAST, on_event=events.append)
    finally:
        ray.shutdown()
    assert (summary.done, summary.failed) == (FLOW_JOBS, 0)
    assert _digests(out) == flow_reference
    assert _done_counts(out) == {f"job{i}": 1 for i in range(FLOW_JOBS)}
    # the items ran in Ray's actors, not here; which actor takes which item is the pool's choice (with four
    # quick items, the actor that finished loading first may take them all: the split is tests/batch/test_scale_out.py's)
    import os

    workers = {e["worker"] for e in events}
    assert workers and os.getpid() not in workers
