"""Inst-Inpaint: the official checkpoint layout converts completely (EMA weights chosen), the remover runs end to end
on a tiny stand-in, and bad weights fail clearly."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from magicremover.baselines.inst_inpaint import Architecture, InstInpaint, InstInpaintModel
from magicremover.baselines.inst_inpaint.keymap import EMA_PREFIX, convert, ema_name, text_key, vq_key
from magicremover.errors import ConfigError, ModelLoadError
from magicremover.experiments.remove import remove
from magicremover.types import RemovalSample

ROOT = Path(__file__).resolve().parents[1]
# Keys of the released checkpoint, written out by hand from the original modules' naming.
KNOWN_OFFICIAL = [
    "model_ema.diffusion_modelinput_blocks00weight",
    "model_ema.diffusion_modelinput_blocks30in_layers2weight",  # level-0 ResBlock(down=True)
    "model_ema.diffusion_modelmiddle_block1transformer_blocks0attn2to_kweight",
    "model_ema.diffusion_modeloutput_blocks22out_layers3weight",  # level-3 ResBlock(up=True)
    "cond_stage_instruction_embedder.transformer.attn_layers.layers.31.1.net.2.weight",
    "cond_stage_instruction_embedder.transformer.pos_emb.emb.weight",
    "first_stage_model.encoder.down.3.attn.1.q.weight",
    "first_stage_model.decoder.up.3.attn.2.proj_out.weight",
    "first_stage_model.decoder.up.1.upsample.conv.weight",
    "first_stage_model.quantize.embedding.weight",
]


def official_text_names(layers: int) -> list[str]:
    """x-transformers TransformerWrapper(Encoder) names, from the module structure."""
    names = ["token_emb.weight", "pos_emb.emb.weight", "norm.weight", "norm.bias", "to_logits.weight", "to_logits.bias"]
    for k in range(2 * layers):
        names += [f"attn_layers.layers.{k}.0.weight", f"attn_layers.layers.{k}.0.bias"]
        block = (
            ["1.to_q.weight", "1.to_k.weight", "1.to_v.weight", "1.to_out.weight", "1.to_out.bias"]
            if k % 2 == 0
            else ["1.net.0.0.weight", "1.net.0.0.bias", "1.net.2.weight", "1.net.2.bias"]
        )
        names += [f"attn_layers.layers.{k}.{b}" for b in block]
    return names


def official_vq_names(channels: tuple[int, ...], blocks: int = 2) -> list[str]:
    """taming VQModel names (attention at the lowest resolution only), from the module structure."""
    params = lambda base, parts: [f"{base}.{p}.{w}" for p in parts for w in ("weight", "bias")]  # noqa: E731

    def resnet(base, cin, cout):
        return params(base, ["norm1", "conv1", "norm2", "conv2"] + (["nin_shortcut"] if cin != cout else []))

    attn = lambda base: params(base, ["norm", "q", "k", "v", "proj_out"])  # noqa: E731
    last, names = len(channels) - 1, ["quantize.embedding.weight", *params("", ["quant_conv", "post_quant_conv"])]
    names += params("encoder", ["conv_in", "norm_out", "conv_out"]) + params(
        "decoder", ["conv_in", "norm_out", "conv_out"]
    )
    cin = channels[0]
    for i, cout in enumerate(channels):
        for j in range(blocks):
            names += resnet(f"encoder.down.{i}.block.{j}", cin if j == 0 else cout, cout) + (
                attn(f"encoder.down.{i}.attn.{j}") if i == last else []
            )
        names += params(f"encoder.down.{i}.downsample", ["conv"]) if i != last else []
        cin = cout
    cin = channels[-1]
    for i in reversed(range(len(channels))):
        for j in range(blocks + 1):
            names += resnet(f"decoder.up.{i}.block.{j}", cin if j == 0 else channels[i], channels[i]) + (
                attn(f"decoder.up.{i}.attn.{j}") if i == last else []
            )
        names += params(f"decoder.up.{i}.upsample", ["conv"]) if i != 0 else []
        cin = channels[i]
    for part in ("encoder", "decoder"):
        names += resnet(f"{part}.mid.block_1", 1, 1) + attn(f"{part}.mid.attn_1") + resnet(f"{part}.mid.block_2", 1, 1)
    return [name.lstrip(".") for name in names]


def official_layout(model: InstInpaintModel) -> dict[str, str]:
    """Every official key of ``model``'s architecture → the name of our parameter it must fill."""
    a, layout = model.architecture, {}
    for name in model.unet.state_dict():
        layout[ema_name(name)] = layout[f"model.diffusion_model.{name}"] = f"unet:{name}"
    for name in official_text_names(a.text_layers):
        layout[f"cond_stage_instruction_embedder.transformer.{name}"] = f"text:{text_key(name)}"
    for name in official_vq_names(a.vq_channels):
        layout[f"first_stage_model.{name}"] = f"vq:{vq_key(name, len(a.vq_channels))}"
    return layout


@pytest.mark.parametrize("architecture", ["tiny", "published"])
def test_the_official_layout_maps_one_to_one_onto_our_modules(architecture):
    with torch.device("meta"):
        model = InstInpaintModel(Architecture.named(architecture))
    layout = official_layout(model)
    ours = {f"{prefix}:{name}" for prefix, module in model.parts().items() for name in module.state_dict()}
    filled = [target for key, target in layout.items() if not key.startswith("model.diffusion_model.")]
    assert sorted(filled) == sorted(ours)  # every weight filled exactly once
    if architecture == "published":
        assert set(KNOWN_OFFICIAL) <= set(layout)
        assert sum(p.numel() for p in model.unet.parameters()) > 100e6


def _official_checkpoint(model: InstInpaintModel) -> dict[str, torch.Tensor]:
    """The tiny model's weights under the official keys; the live UNet differs from the EMA one by +1."""
    values = {
        f"{prefix}:{name}": v for prefix, module in model.parts().items() for name, v in module.state_dict().items()
    }
    state = {}
    for key, target in official_layout(model).items():
        value = values[target].clone()
        if re.search(r"attn(_1)?\.(\d+\.)?(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]  # taming's attention projections are 1x1 convolutions
        state[key] = value + 1 if key.startswith("model.diffusion_model.") else value
    state |= {
        "cond_stage_model.quantize.embedding.weight": state["first_stage_model.quantize.embedding.weight"],
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(10),
        "betas": torch.zeros(1000),
        "alphas_cumprod": model.scheduler.alphas_cumprod.clone(),
    }
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = InstInpaintModel(Architecture.named("tiny"))
    path = tmp_path_factory.mktemp("inst") / "model.ckpt"
    torch.save({"state_dict": _official_checkpoint(model)}, path)
    return path, model


def test_every_key_is_consumed_or_ignored_and_the_ema_weights_load(checkpoint):
    path, source = checkpoint
    state = torch.load(path, weights_only=True)["state_dict"]
    target = InstInpaintModel(Architecture.named("tiny"))
    report = convert(state, target.unet, target.text_encoder, target.vq, alphas_cumprod=target.scheduler.alphas_cumprod)
    assert sorted(report["consumed"] + report["ignored"]) == sorted(state)
    assert all(k.startswith(EMA_PREFIX) or not k.startswith("model") for k in report["consumed"])
    for ours, theirs in zip(target.parameters(), source.parameters()):
        assert torch.equal(ours, theirs)
    live = InstInpaintModel(Architecture.named("tiny"))
    convert(state, live.unet, live.text_encoder, live.vq, use_ema=False)
    first = next(iter(source.unet.state_dict()))
    assert torch.equal(live.unet.state_dict()[first], source.unet.state_dict()[first] + 1)


def test_bad_checkpoints_are_refused(checkpoint, tmp_path):
    path, _ = checkpoint
    state = torch.load(path, weights_only=True)["state_dict"]
    model = InstInpaintModel(Architecture.named("tiny"))
    with pytest.raises(ModelLoadError, match="not Inst-Inpaint's, e.g. optimizer.extra"):
        convert(state | {"optimizer.extra": torch.zeros(1)}, model.unet, model.text_encoder, model.vq)
    missing = {k: v for k, v in state.items() if "to_logits" not in k}
    with pytest.raises(ModelLoadError, match="lacks 2 text weights, e.g. to_logits.bias"):
        convert(missing, model.unet, model.text_encoder, model.vq)
    with pytest.raises(ModelLoadError, match="noise schedule"):
        convert(
            state | {"alphas_cumprod": torch.ones(1000)},
            model.unet,
            model.text_encoder,
            model.vq,
            alphas_cumprod=model.scheduler.alphas_cumprod,
        )
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": Path("x")}, pickled)
    with pytest.raises(ModelLoadError, match="python -m magicremover.baselines.inst_inpaint.convert"):
        InstInpaintModel(Architecture.named("tiny")).load(pickled)
    with pytest.raises(ModelLoadError, match="set weights.inst_inpaint="):
        InstInpaint(weights=None)
    for template in ("remove the object", "remove the {target} {where}"):
        with pytest.raises(ConfigError, match="must be a template with {target} and no other fields"):
            InstInpaint(weights=str(path), instruction=template)


def test_removal_runs_deterministically_and_records_its_handicap(checkpoint, bert_vocab, tmp_path):
    path, _ = checkpoint
    remover = InstInpaint(str(path), str(bert_vocab), "tiny", num_inference_steps=3, resolution=96, device="cpu")
    sample = RemovalSample(Image.new("RGB", (80, 60), (40, 120, 200)), "a photo of a red circle", "red circle")
    first, second = remover(sample), remover(sample)
    assert first.image.shape == (1, 3, 96, 96) and torch.equal(first.image, second.image)
    assert 0 <= first.image.min() and first.image.max() <= 1
    assert (
        first.extras | {"instruction": "remove the red circle", "native_resolution": 64, "upsampled_to": 96}
        == first.extras
    )
    # a converted .safetensors file gives the same output
    from magicremover.baselines.inst_inpaint.convert import main as convert_main

    converted = tmp_path / "inst.safetensors"
    convert_main([str(path), str(converted), "--architecture", "tiny"])
    again = InstInpaint(str(converted), str(bert_vocab), "tiny", num_inference_steps=3, resolution=96, device="cpu")(
        sample
    )
    assert torch.equal(again.image, first.image)


def test_inst_inpaint_through_the_cli(checkpoint, bert_vocab, tmp_path, example_image):
    path, _ = checkpoint
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "remove",
            overrides=[
                "method=inst_inpaint",
                f"weights.inst_inpaint={path}",
                f"weights.inst_inpaint_tokenizer={bert_vocab}",
                "method.architecture=tiny",
                "method.num_inference_steps=2",
                "method.resolution=64",
                f"out_dir={tmp_path}",
                "device=cpu",
            ],
        )
    payload = remove(cfg, tmp_path)
    assert Image.open(tmp_path / "output.png").size == (64, 64)
    assert payload["extras"]["instruction"] == "remove the circle"
