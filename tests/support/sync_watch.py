"""A dispatch mode that counts the ops which would make a GPU wait for the host (see test_loop_syncs)."""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), float(t), int(t), bool(t)
        "is_nonzero",
        "equal",
        "nonzero",
        "masked_select",
        "unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "repeat_interleave",
    }
)


class SyncWatch(TorchDispatchMode):
    """Counts the syncing ops run while ``watching`` is on, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = False
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if self.watching and name in SYNCING_OPS:
            self.seen[name] += 1
        return func(*args, **(kwargs or {}))

    def callback(self, info: dict) -> None:
        """The pipeline's per-evaluation callback: watch from the first evaluation to the last."""
        if info["evaluations"] == 1:
            self.watching = True
        if info["evaluations"] == info["total"]:
            self.watching = False
