"""The meta-device cost model of ``sow bench --count-only``: FLOPs of a run without running a model.

:func:`meta_components` builds the target architecture on the meta device (configs suffice);
:func:`shape_only` makes the tiny model's modules return zeros of the right shapes, so one pass
of the real pipeline yields the real schedule's call shapes; :func:`cost_model` prices them.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

from sow.bench.flops import CallShapes, count_flops, modules_to_watch
from sow.bench.reports import CostConfig, CostReport
from sow.bench.settings import BenchSettings
from sow.bench.timing import BENCH_PROMPT

SAMPLE_FACE = Path(__file__).resolve().parents[1] / "data" / "sample_face.jpg"
"""The shipped sample face, the benchmark's default condition."""


def meta_components(spec: str):
    """The models named by ``spec`` (``tiny``, ``tiny-sdxl``, or a folder of configs or weights) on the meta
    device: shapes only. A ``text_encoder_2/`` config (SDXL) adds the second encoder."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sow.errors import ModelLoadError
    from sow.models.loading import tiny_configs, tiny_sdxl_configs

    second_cfg = None
    if spec in ("tiny", "tiny-sdxl"):
        configs = tiny_configs() if spec == "tiny" else tiny_sdxl_configs()
        unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], CLIPTextConfig(**configs["text_encoder"])
        if "text_encoder_2" in configs:
            second_cfg = CLIPTextConfig(**configs["text_encoder_2"])
    else:
        folder = Path(spec).expanduser()
        if not (folder / "unet" / "config.json").is_file():
            raise ModelLoadError(f"--count-only needs 'tiny', 'tiny-sdxl' or a folder with unet/, vae/ and text_encoder/ configs; got {spec!r}")
        unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
        vae_cfg = AutoencoderKL.load_config(folder / "vae")
        text_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder")
        if (folder / "text_encoder_2" / "config.json").is_file():
            second_cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
    with torch.device("meta"):
        return SimpleNamespace(
            unet=UNet2DConditionModel.from_config(unet_cfg),
            vae=AutoencoderKL.from_config(vae_cfg),
            text_encoder=CLIPTextModel(text_cfg),
            text_encoder_2=CLIPTextModelWithProjection(second_cfg) if second_cfg is not None else None,
        )


@contextmanager
def shape_only(components):
    """Within: the UNet, the VAE's encoder and decoder and the text encoder return zeros of their output shapes.

    Forward pre-hooks (:class:`CallShapes`) still see every call; nothing is computed.
    """
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    vae = components.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = vae.config.latent_channels

    def unet(sample, timestep, encoder_hidden_states=None, **kwargs):
        return UNet2DConditionOutput(sample=torch.zeros_like(sample))

    def encoder(x, *args, **kwargs):
        return x.new_zeros(x.shape[0], 2 * latent, x.shape[2] // factor, x.shape[3] // factor)

    def decoder(z, *args, **kwargs):
        return z.new_zeros(z.shape[0], vae.config.out_channels, z.shape[2] * factor, z.shape[3] * factor)

    def text_encoder_of(module):
        """Zeros shaped like the encoder's output (last state, pooled or projected, every hidden state), in its order."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.clip.modeling_clip import CLIPTextModelOutput

        config = module.config
        hidden, layers = config.hidden_size, config.num_hidden_layers
        projected = "WithProjection" in type(module).__name__

        def forward(input_ids, *args, output_hidden_states=None, **kwargs):
            zeros = torch.zeros(*input_ids.shape, hidden)
            states = tuple(zeros for _ in range(layers + 1)) if output_hidden_states else None
            if projected:  # SDXL's second encoder: text_embeds first, as CLIPTextModelWithProjection returns
                embeds = torch.zeros(input_ids.shape[0], config.projection_dim)
                return CLIPTextModelOutput(text_embeds=embeds, last_hidden_state=zeros, hidden_states=states)
            return BaseModelOutputWithPooling(last_hidden_state=zeros, pooler_output=torch.zeros(input_ids.shape[0], hidden), hidden_states=states)

        return forward

    stand_ins = {components.unet: unet, vae.encoder: encoder, vae.decoder: decoder}
    for encoder_module in components.text_encoders:
        stand_ins[encoder_module] = text_encoder_of(encoder_module)
    for module, forward in stand_ins.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in stand_ins:
            del module.forward  # the class's forward again


def cost_model(args: BenchSettings) -> CostReport:
    """FLOPs of one run of ``args.model``'s architecture at ``args``' settings, without running it.

    The call shapes come from one pass of the pipeline over the tiny model of the same
    structure (``tiny-sdxl`` for a target with two text encoders) whose UNet, VAE and text
    encoders are replaced by stand-ins that return zeros of the right shape
    (:func:`shape_only`): the schedule, the batches and the latent grid are the real ones,
    no model computes. The text and pooled widths are swapped for the target's. DAM's extra
    rows are not in it.
    """
    from sow.bench.flow_cost import flow_cost_model, is_flow_folder

    if is_flow_folder(args.model):  # a flow transformer (SD 3, FLUX.1, FLUX.2): its calls follow from its settings
        return flow_cost_model(args.model, args.size, args.batch[0], {"cycles": args.cycles})
    from sow.models.loading import load_components
    from sow.pipeline import SOWPipeline

    target = meta_components(args.model)
    tiny = load_components("tiny-sdxl" if target.text_encoder_2 is not None else "tiny", device="cpu")
    pipe = SOWPipeline(tiny, {"modulator": "none"})
    config = pipe.make_config(None, "normal", **args.config_overrides("none"))
    phases: Counter = Counter()
    shapes = CallShapes(modules_to_watch(tiny))
    try:
        with shape_only(tiny):
            pipe(args.condition or SAMPLE_FACE, BENCH_PROMPT, seed=args.seed,
                 config=config, num_images=args.batch[0], callback=lambda info: phases.update([info["phase"]]))
    finally:
        shapes.remove()
    width = target.unet.config.cross_attention_dim
    calls: Counter = Counter()
    for (name, call_shapes), n in shapes.calls.items():
        if name == "unet":
            swapped = (call_shapes[0], (*call_shapes[1][:-1], width))
            if len(call_shapes) > 2:  # the pooled text of SDXL's added conditioning: the target's projection width
                swapped += ((call_shapes[2][0], target.text_encoder_2.config.projection_dim),)
            call_shapes = swapped
        calls[(name, call_shapes)] += n
    counted = count_flops(target, calls)
    return CostReport(
        model=args.model,
        batch=args.batch[0],
        config=CostConfig(canvas=args.size, steps=config.num_inference_steps, cycles=config.cycles, t1=config.t1, t2=config.t2),
        unet_calls_per_phase=dict(phases),
        unet_evaluations=sum(phases.values()),
        **dict(counted),
        note="standard models only (UNet, VAE, text encoder); DAM's extra work is counted by a timed run (flops.modulation_extra_tflop) and timed (report['dam'])",
    )
