"""FLUX.2 [klein] single files: the transformer alone in Black Forest Labs' own layout, the other
components from a base model in diffusers layout; claimed by ``flux2`` (never by ``flux1``, whose
double-block tensors a FLUX.2 file also holds), checked for size before anything is built."""

from __future__ import annotations

import pytest
import torch

from sow.engine.backbone import LoadRequest
from sow.errors import ModelLoadError
from sow.models.flow.tiny import build_tiny_flow
from sow.plugins import build_registry

DOUBLE = {  # diffusers name in a double block -> original name
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm", "attn.to_out.0": "img_attn.proj",
    "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2", "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm", "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer", "proj_out": "final_layer.linear",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
}


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``Flux2Transformer2DModel`` state dict in BFL's layout (what a published single file holds):
    fused qkv per stream, RMS norm weights as ``scale``, the final modulation's (scale, shift) swapped back."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor]] = {}
    for key, value in state.items():
        module, kind = key.rsplit(".", 1)
        if module.startswith("transformer_blocks."):
            _, n, inner = module.split(".", 2)
            for stream, names in (("img", ("attn.to_q", "attn.to_k", "attn.to_v")), ("txt", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))):
                if inner in names:
                    fused.setdefault(f"double_blocks.{n}.{stream}_attn.qkv.{kind}", [None] * 3)[names.index(inner)] = value
                    break
            else:
                renamed = DOUBLE[inner]
                out[f"double_blocks.{n}.{renamed}.{'scale' if 'norm' in renamed else kind}"] = value
        elif module.startswith("single_transformer_blocks."):
            _, n, inner = module.split(".", 2)
            renamed = SINGLE[inner]
            out[f"single_blocks.{n}.{renamed}.{'scale' if 'norm' in renamed else kind}"] = value
        elif module == "norm_out.linear":
            scale, shift = value.chunk(2, dim=0)
            out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale], dim=0)
        else:
            out[f"{TOP[module]}.{kind}"] = value
    out.update({k: torch.cat(parts, dim=0) for k, parts in fused.items()})
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def klein_files(tmp_path_factory):
    """(a tiny klein in diffusers layout, its transformer as a BFL single file, the components)."""
    import diffusers
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("klein")
    parts = build_tiny_flow("tiny-flux2")
    diffusers.Flux2KleinPipeline(**parts, is_distilled=True).save_pretrained(root / "base", safe_serialization=True)
    single = root / "flux-2-klein-tiny.safetensors"
    save_file(original_layout(parts["transformer"].state_dict()), str(single))
    return root / "base", single, parts


def request(spec, **options) -> LoadRequest:
    return LoadRequest(spec=str(spec), device=torch.device("cpu"), dtype=torch.float32, options=options)


def test_a_klein_single_file_is_claimed_by_flux2_and_loads_the_same_transformer(klein_files):
    base, single, parts = klein_files
    registry = build_registry(load_entry_points=False)
    entry = registry.family_for(request(single))
    assert entry.name == "flux2"
    # and flux1 does not claim it, though the file holds double_blocks.0.img_attn.qkv.weight too
    assert [n for n in ("sd3", "flux1", "flux2") if registry.family(n).family.claims(request(single))] == ["flux2"]
    backbone = entry.family.load(request(single, base=str(base)))
    assert backbone.family == "flux2"
    loaded, original = backbone.transformer.state_dict(), parts["transformer"].state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    x = torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    text = {"encoder_hidden_states": torch.randn(1, 8, 96, generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():  # the loaded model computes what the tiny one does
        expected = parts["transformer"]
        ours = backbone.predict(x, 500.0, text).output
        backbone.transformer = expected
        try:
            reference = backbone.predict(x, 500.0, text).output
        finally:
            backbone.transformer = backbone.components["transformer"]
    assert torch.equal(ours, reference)


def test_a_flux1_file_is_not_claimed_by_flux2(klein_files, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "flux1.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 2)}, str(path))
    registry = build_registry(load_entry_points=False)
    assert registry.family_for(request(path)).name == "flux1"


def test_a_single_file_too_big_for_the_memory_is_refused_before_it_is_built(klein_files, monkeypatch):
    import sow.models.checks as checks

    base, single, _ = klein_files
    monkeypatch.setattr(checks, "available_memory", lambda device: (1000, "of available memory"))
    registry = build_registry(load_entry_points=False)
    with pytest.raises(ModelLoadError, match=r"checkpoint flux-2-klein-tiny\.safetensors has 0\.00 billion parameters"):
        registry.family("flux2").family.load(request(single, base=str(base)))


def test_a_single_file_without_its_base_is_one_line(klein_files, tmp_path):
    _, single, _ = klein_files
    registry = build_registry(load_entry_points=False)
    with pytest.raises(ModelLoadError, match="holds the transformer only; pass the loader option base=") as caught:
        registry.family("flux2").family.load(request(single, base=str(tmp_path / "nowhere")))
    assert "\n" not in str(caught.value)


def test_a_pickled_klein_file_is_not_claimed(tmp_path):
    path = tmp_path / "flux-2-klein.ckpt"
    path.write_bytes(b"not read")
    registry = build_registry(load_entry_points=False)
    entry = registry.family_for(request(path))
    assert entry is None or entry.name != "flux2"
