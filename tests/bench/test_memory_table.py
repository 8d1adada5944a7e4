"""The meta-device memory model: the live-bytes tracker against hand counts, the modes' order."""

from __future__ import annotations

import torch

from sow.bench.memory import LiveBytes, activation_peak, memory_table


def test_live_bytes_counts_new_tensors_frees_dropped_ones_and_skips_views():
    def run():
        a = torch.zeros(1000, 1000)  # 4,000,000 bytes
        b = a + 1  # 8,000,000 live
        del a
        c = b * 2  # a is gone: still 8,000,000
        c.view(-1).transpose(0, 0)  # views share memory
        del b, c

    assert activation_peak(run) == 8_000_000
    with LiveBytes() as tracker:
        x = torch.ones(10, device="meta")
        y = x.exp()
        assert tracker.live == 80
        del x, y
    assert tracker.live == 0


def test_memory_table_of_tiny_sdxl_orders_the_modes():
    from sow.bench.cost_model import meta_components

    models = meta_components("tiny-sdxl")
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("unet", models.unet), ("vae", models.vae))}
    table = memory_table(models, canvas=64, dtype=torch.bfloat16, batches=(2, 4))
    assert table["weights"]["unet"] == 2 * params["unet"] and table["weights"]["vae"] == 2 * params["vae"]
    peaks, modes = table["activation_peaks"], table["modes"]
    assert 0 < peaks["unet_b2_sdpa"] < peaks["unet_b4_sdpa"]
    assert modes["model offload"] <= modes["resident"]
    assert modes["resident, VAE tiling"] <= modes["resident"]
    assert modes["resident"] == sum(table["weights"].values()) + max(peaks["unet_b4_sdpa"], peaks["vae_decode"])
