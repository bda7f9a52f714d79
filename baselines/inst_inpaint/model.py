"""Inst-Inpaint (Yildirim et al., 2023): an instruction-conditioned latent diffusion inpainter, behind our contract.

The published model: a VQ-f8 first stage (taming ``VQModel``: 16,384 codes of dimension 4, channels 128·[1,2,2,4],
attention at 32²) whose *quantised* encoding of the source image is concatenated to the noisy latent; an 8-channel
openaimodel UNet (:mod:`.unet`); a 16-layer, 512-d x-transformers encoder trained from scratch on BERT-uncased tokens
(diffusers' ``LDMBertModel`` computes exactly that encoder); LDM's linear schedule 0.0015-0.0195 over 1000 steps.
Inference: centre crop, 256², DDIM 50 steps, η 0, no classifier-free guidance, EMA weights, latents decoded
without re-quantisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import DDIMScheduler, VQModel
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
from torch import nn

from magicremover.baselines.inst_inpaint.keymap import convert
from magicremover.baselines.inst_inpaint.unet import UNetConfig, UNetModel
from magicremover.errors import ConfigError, ModelLoadError
from magicremover.images import Resize, fit_to_model, load_image, to_pil
from magicremover.models import resolve_device
from magicremover.types import RemovalResult, RemovalSample


@dataclass(frozen=True)
class Architecture:
    """Sizes of the three networks. ``published()`` is the released model; ``tiny()`` a CPU stand-in for tests."""

    unet: UNetConfig = UNetConfig()
    text_dim: int = 512
    text_layers: int = 16
    text_heads: int = 8
    vocab_size: int = 30522
    vq_channels: tuple[int, ...] = (128, 256, 256, 512)
    vq_codes: int = 16384
    image_size: int = 256

    @classmethod
    def named(cls, name: str) -> "Architecture":
        presets = {
            "published": cls(),
            "tiny": cls(
                unet=UNetConfig(
                    model_channels=32,
                    channel_mult=(1, 2),
                    num_res_blocks=1,
                    attention_resolutions=(2,),
                    num_heads=2,
                    context_dim=32,
                ),
                text_dim=32,
                text_layers=2,
                text_heads=2,
                vocab_size=64,
                vq_channels=(32, 32, 32, 64),
                vq_codes=64,
                image_size=64,
            ),
        }
        if name not in presets:
            raise ModelLoadError(f"method.architecture={name} is not one of {', '.join(presets)}")
        return presets[name]


class InstInpaintModel(nn.Module):
    """The three networks and the sampler of one architecture, randomly initialised (load weights with :func:`convert`)."""

    def __init__(self, architecture: Architecture = Architecture()):
        super().__init__()
        a = self.architecture = architecture
        self.unet = UNetModel(a.unet)
        self.text_encoder = LDMBertModel(
            LDMBertConfig(
                vocab_size=a.vocab_size,
                max_position_embeddings=77,
                encoder_layers=a.text_layers,
                encoder_ffn_dim=4 * a.text_dim,
                encoder_attention_heads=a.text_heads,
                head_dim=a.text_dim // a.text_heads,
                d_model=a.text_dim,
            )
        )
        levels = len(a.vq_channels)
        self.vq = VQModel(
            in_channels=3,
            out_channels=3,
            block_out_channels=a.vq_channels,
            layers_per_block=2,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * (levels - 1) + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (levels - 1),
            num_vq_embeddings=a.vq_codes,
            vq_embed_dim=4,
            norm_num_groups=32,
            sample_size=a.image_size,
        )
        # LDM's "linear" schedule is linear in sqrt(beta) (diffusers: scaled_linear); its DDIM visits t = 981, 961, …, 1
        # and ends on alphas_cumprod[0] (steps_offset=1, set_alpha_to_one=False).
        self.scheduler = DDIMScheduler(
            beta_start=0.0015,
            beta_end=0.0195,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )

    def parts(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "text": self.text_encoder, "vq": self.vq}

    def save(self, path: str | Path, name: str) -> None:
        """Our format: one ``.safetensors`` of the three networks (``unet.``/``text.``/``vq.``) recording ``name``,
        the architecture (see :meth:`Architecture.named`)."""
        from safetensors.torch import save_file

        tensors = {
            f"{prefix}.{k}": v.contiguous()
            for prefix, module in self.parts().items()
            for k, v in module.state_dict().items()
        }
        save_file(tensors, str(path), metadata={"architecture": name})

    def load(self, path: str | Path, use_ema: bool = True) -> dict:
        """Weights from the official Lightning ``.ckpt`` (tensors only) or from our converted ``.safetensors``."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"weights.inst_inpaint={path} does not exist; point it at Inst-Inpaint's ldm/model.ckpt"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            for prefix, module in self.parts().items():
                module.load_state_dict(
                    {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
                )
            return {"format": "safetensors"}
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickled training state: refuse rather than run code from the file
            raise ModelLoadError(
                f"{path.name} holds pickled objects besides tensors ({type(err).__name__}); convert it once with "
                f"`python -m magicremover.baselines.inst_inpaint.convert {path} inst-inpaint.safetensors` (only for a file you trust)"
            ) from None
        return convert(
            state.get("state_dict", state),
            self.unet,
            self.text_encoder,
            self.vq,
            use_ema,
            self.scheduler.alphas_cumprod,
        )


class InstInpaint:
    """Instruction-based removal: ``"remove the {target}"`` (or the sample's own instruction), as the paper ran it.

    Args:
        weights: the official ``model.ckpt`` (tensors-only) or a converted ``.safetensors``.
        tokenizer: BERT uncased: a hub id (cached) or a local folder with ``vocab.txt``.
        architecture: ``published`` or ``tiny`` (a random test stand-in); ``None``: the one a converted
            ``.safetensors`` file records, else ``published``.
        use_ema: sample with the EMA weights (the authors' ``ema_scope``).
        num_inference_steps / seed: DDIM steps (50) and the initial-noise seed (0).
        instruction: template used when a sample carries no instruction.
        resolution: the evaluation resolution the 256² output is upsampled to (recorded as a handicap).
        resize: ``center_crop`` (the published preprocessing) or ``stretch``.
        device: ``auto``, ``cpu``, ``cuda``…
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    components = None  # its own network, no shared diffusion model

    def __init__(
        self,
        weights: str | None = None,
        tokenizer: str = "bert-base-uncased",
        architecture: str | None = None,
        use_ema: bool = True,
        num_inference_steps: int = 50,
        seed: int = 0,
        instruction: str = "remove the {target}",
        resolution: int = 512,
        resize: Resize = "center_crop",
        device: str = "auto",
    ):
        if "{target}" not in instruction or _formats(instruction) is None:
            raise ConfigError(
                f"method.instruction={instruction!r} must be a template with {{target}} and no other fields, e.g. 'remove the {{target}}'"
            )
        if not weights:
            raise ModelLoadError(
                "Inst-Inpaint needs its weights: set weights.inst_inpaint=/path/to/ldm/model.ckpt (from the authors' release)"
            )
        self.device = resolve_device(device)
        self.model = InstInpaintModel(Architecture.named(architecture or _recorded_architecture(weights)))
        self.load_report = self.model.load(weights, use_ema)
        self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = _bert_tokenizer(tokenizer, self.model.architecture.vocab_size)
        self.steps, self.seed, self.instruction = num_inference_steps, seed, instruction
        self.resolution, self.resize = resolution, resize

    @torch.no_grad()
    def __call__(self, sample: RemovalSample) -> RemovalResult:
        start = time.perf_counter()
        m, size = self.model, self.model.architecture.image_size
        instruction = sample.instruction or self.instruction.format(target=sample.target)
        image = fit_to_model(load_image(sample.image), size, self.resize).to(self.device) * 2 - 1
        # The source conditioning is the *quantised* VQ encoding (taming's encode), concatenated to the noisy latent.
        source, *_ = m.vq.quantize(m.vq.encode(image).latents)
        ids = self.tokenizer(
            [instruction], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        context = m.text_encoder(ids.to(self.device)).last_hidden_state
        generator = torch.Generator().manual_seed(self.seed)
        latent = torch.randn(source.shape, generator=generator).to(self.device)
        m.scheduler.set_timesteps(self.steps)
        for t in m.scheduler.timesteps:
            eps = m.unet(torch.cat([latent, source], dim=1), t.to(self.device)[None], context)
            latent = m.scheduler.step(eps, t, latent, eta=0.0).prev_sample
        decoded = m.vq.decode(latent, force_not_quantize=True).sample.clamp(-1, 1)
        native = (decoded.cpu().float() + 1) / 2
        output = fit_to_model(to_pil(native), self.resolution, "stretch")
        return RemovalResult(
            image=output,
            calls={},
            seconds={"total": time.perf_counter() - start},
            extras={
                "instruction": instruction,
                "native_resolution": size,
                "upsampled_to": self.resolution,
                "resize": self.resize,
            },
        )


def _formats(template: str) -> str | None:
    try:
        return template.format(target="x")
    except (KeyError, IndexError, ValueError):
        return None


def _recorded_architecture(weights: str) -> str:
    if not str(weights).endswith(".safetensors") or not Path(weights).expanduser().is_file():
        return "published"
    from safetensors import safe_open

    with safe_open(str(Path(weights).expanduser()), "pt") as stream:
        return (stream.metadata() or {}).get("architecture", "published")


def _bert_tokenizer(source: str, vocab_size: int):
    from transformers import BertTokenizerFast

    try:
        tokenizer = BertTokenizerFast.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load the BERT tokenizer from {source} ({str(err).splitlines()[0]}); set method.tokenizer=DIR with vocab.txt"
        ) from err
    if len(tokenizer) != vocab_size:
        raise ModelLoadError(
            f"the tokenizer at {source} has {len(tokenizer)} tokens, the text encoder embeds {vocab_size}; use bert-base-uncased's vocab.txt"
        )
    return tokenizer
