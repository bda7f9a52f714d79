"""The model zoo: Stable Diffusion components from the hub, a local folder, or built tiny and random.

Every UNet model, whatever its source, comes back as :class:`SDComponents` with frozen weights, the DDIM scheduler
built with SD's settings, and a :class:`~magicremover.unet_calls.UNetCalls` counter on its UNet. Two UNet families
load: SD 1.x/2.x (one CLIP encoder) and SDXL (two, and a pooled embedding; :mod:`magicremover.sdxl`); the FLUX family
(a transformer; :mod:`magicremover.flux`) loads as :class:`~magicremover.flux.FluxComponents`, the SD3 family
(:mod:`magicremover.sd3`) as :class:`~magicremover.sd3.SD3Components`. The folder's ``model_index.json`` tells them
apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from magicremover.errors import ConfigError, ModelLoadError
from magicremover.flux import FLUX_COMPONENTS, FLUX_PIPELINES, FluxComponents, load_flux
from magicremover.sd3 import SD3_COMPONENTS, SD3_PIPELINES, SD3Components, load_sd3
from magicremover.unet_calls import UNetCalls

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
XL_COMPONENTS = ("text_encoder_2", "tokenizer_2")  # SDXL's second encoder (OpenCLIP ViT-bigG) and its tokenizer
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
# The noise schedule every SD 1.x/2.x checkpoint was trained with (and the toy model copies).
SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass
class SDComponents:
    """A latent text-to-image diffusion model of the Stable Diffusion family.

    Attributes:
        unet: ε-predicting UNet, input ``(B, C, h, w)`` latents.
        vae: autoencoder; images ``(B, 3, H, W)`` in [-1, 1] ↔ latents ``(B, C, H/f, W/f)``.
        text_encoder / tokenizer: CLIP text model and its tokenizer.
        scheduler: DDIM with SD's settings (eta 0, leading spacing, ``steps_offset=1``).
        identity: a string that changes whenever the weights do (keys the inversion cache).
        text_encoder_2 / tokenizer_2: SDXL's second encoder (with the pooled projection) and its tokenizer; ``None``
            for SD 1.x/2.x.
        zero_empty_prompt: the unconditional input is zeros rather than the encoded ``""`` (SDXL base's
            ``force_zeros_for_empty_prompt``).
        calls: per-stage UNet call counter.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    identity: str
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    zero_empty_prompt: bool = False
    calls: UNetCalls = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if module is not None:
                module.requires_grad_(False).eval()
        self.calls = UNetCalls(self.unet)
        check_components(self)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def family(self) -> str:
        """``sd`` (1.x/2.x) or ``sdxl``: which methods can run on it (a remover's ``families``)."""
        return "sdxl" if self.is_xl else "sd"

    @property
    def is_xl(self) -> bool:
        """SDXL: two text encoders, and a pooled embedding and size ids beside the tokens."""
        return self.text_encoder_2 is not None

    @property
    def components(self) -> tuple[str, ...]:
        """The names of the folders a saved copy has."""
        return COMPONENTS + (XL_COMPONENTS if self.is_xl else ())

    @property
    def cross_attention_strides(self) -> set[int]:
        """How many times smaller than the latent grid each cross-attention layer's query grid is (SD 1.5: 1, 2, 4,
        8; SDXL: 2, 4)."""
        blocks = self.unet.config.down_block_types
        strides = {2**i for i, block in enumerate(blocks) if "CrossAttn" in block}
        mid = "CrossAttn" in (self.unet.config.mid_block_type or "")
        return strides | ({2 ** (len(blocks) - 1)} if mid else set())

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.5, 1024 for SDXL, 64 for the toy and tiny models)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write a diffusers-format folder that :func:`load_pretrained` (``model.path=``) reads back.

        Args:
            directory: the folder to write.
            dtype: store the weights in this precision (e.g. ``torch.float16`` to halve the files); the loader casts
                them to the dtype it is asked for.
        """
        directory = Path(directory)
        for name in self.components:
            part = getattr(self, name)
            if dtype is not None and isinstance(part, torch.nn.Module):
                part = copy.deepcopy(part).to(dtype)
            part.save_pretrained(directory / name)
        self.scheduler.save_pretrained(directory / "scheduler")
        pipeline = "StableDiffusionXLPipeline" if self.is_xl else "StableDiffusionPipeline"
        index = {"_class_name": pipeline, "_diffusers_version": _version("diffusers")}
        index |= {name: _library_and_class(getattr(self, name)) for name in (*self.components, "scheduler")}
        if self.is_xl:
            index |= {"force_zeros_for_empty_prompt": self.zero_empty_prompt}
        else:
            index |= {
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        (directory / "model_index.json").write_text(json.dumps(index, indent=2))


def check_components(c: SDComponents) -> None:
    """Fail clearly on mismatched or silently broken components (e.g. a 2-token offline tokenizer)."""
    n_tokens = len(c.tokenizer)
    if n_tokens < 100:
        raise ModelLoadError(
            f"the tokenizer has only {n_tokens} tokens: an offline hub load returned an empty stand-in; "
            "pass a local model folder with model.path=DIR"
        )
    if n_tokens > c.text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"tokenizer has {n_tokens} tokens but the text encoder embeds {c.text_encoder.config.vocab_size}"
        )
    text_width = c.text_encoder.config.hidden_size + (c.text_encoder_2.config.hidden_size if c.is_xl else 0)
    if c.unet.config.cross_attention_dim != text_width:
        raise ModelLoadError(
            f"UNet cross_attention_dim {c.unet.config.cross_attention_dim} != text encoder hidden size "
            f"{text_width}: the components come from different models"
            + ("" if c.is_xl else " (an SDXL UNet needs text_encoder_2/ and tokenizer_2/ beside it)")
        )
    if c.is_xl:
        _check_xl(c)
    if c.unet.config.in_channels != c.vae.config.latent_channels:
        raise ModelLoadError(
            f"UNet takes {c.unet.config.in_channels} channels but the VAE makes {c.vae.config.latent_channels}: "
            "inpainting UNets (9 channels) are for method=sd_inpaint, not for inversion"
        )
    if c.tokenizer.model_max_length > c.text_encoder.config.max_position_embeddings:
        raise ModelLoadError("tokenizer context is longer than the text encoder's position embeddings")


def _check_xl(c: SDComponents) -> None:
    """SDXL's added conditioning must fit the UNet, and both tokenizers must split text alike (the target word's
    positions are found once, with the first)."""
    projection = c.text_encoder_2.config.projection_dim
    added = getattr(c.unet, "add_embedding", None)
    expected = c.unet.config.addition_time_embed_dim * 6 + projection if added is not None else None
    if added is None or added.linear_1.in_features != expected:
        raise ModelLoadError(
            f"the UNet takes no SDXL size-and-pooled conditioning of width {expected}: "
            "unet/ and text_encoder_2/ come from different models"
        )
    if projection > c.unet.config.cross_attention_dim:
        raise ModelLoadError(f"text_encoder_2 projects to {projection}, wider than the token embedding")
    probe = "a photo of a fire hydrant"
    if c.tokenizer(probe).input_ids != c.tokenizer_2(probe).input_ids:
        raise ModelLoadError("tokenizer/ and tokenizer_2/ split text differently; they must share one vocabulary")


def build_ddim_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """DDIM with Stable Diffusion's settings, built explicitly rather than trusted from a checkpoint."""
    return DDIMScheduler(
        **SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but CUDA is not available here; use device=auto or device=cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → float16 on CUDA, float32 on CPU (this CPU has no fast half precision)."""
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in choices:
        raise ConfigError(f"model.dtype={dtype} is not one of auto, {', '.join(choices)}")
    return choices[dtype]


def load_pretrained(
    source: str | None = None,
    path: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    resolution: int | None = None,
) -> SDComponents | FluxComponents | SD3Components:
    """Load a model from a local diffusers folder (``path``) or a hub id (``source``).

    A hub id is looked up in the local Hugging Face cache first and downloaded only if missing; when that is
    impossible (offline, no network) this fails at once with one line naming ``model.path=``.

    Args:
        source: hub id, e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``.
        path: a local folder with ``unet/ vae/ text_encoder/ tokenizer/`` (and ``text_encoder_2/ tokenizer_2/``
            for SDXL, as its ``model_index.json`` says); wins over ``source``.
        revision: hub revision (branch, tag or commit).
        variant: weight variant to read, e.g. ``fp16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` …
        dtype: ``auto``, ``float32``, ``float16``, ``bfloat16``.
        resolution: the side a transformer family runs at (default: its native 1024); a UNet family runs at its
            ``sample_size``.

    A FLUX folder (``model_index.json`` naming ``FluxPipeline`` or ``FluxFillPipeline``) comes back as
    :class:`~magicremover.flux.FluxComponents`, an SD3 folder (``StableDiffusion3Pipeline``) as
    :class:`~magicremover.sd3.SD3Components`.
    """
    folder = model_folder(source, path, revision, variant)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    pipeline = pipeline_index(folder).get("_class_name", "")
    identity = f"{source if not path else 'local'}:{_fingerprint(folder)}:{variant}:{torch_dtype}"
    if pipeline in FLUX_PIPELINES:
        return load_flux(folder, pipeline, identity, dev, torch_dtype, resolution)
    if pipeline in SD3_PIPELINES:
        return load_sd3(folder, pipeline, identity, dev, torch_dtype, resolution)
    if resolution is not None:
        raise ConfigError(f"model.resolution applies to transformer families; {folder} runs at its UNet's sample_size")
    kwargs = {"torch_dtype": torch_dtype, "variant": variant}
    xl = is_xl_folder(folder)
    parts = {}
    try:
        parts["unet"] = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs)
        parts["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs)
        parts["text_encoder"] = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype)
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        if xl:
            parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", dtype=torch_dtype
            )
            parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the model from {folder}: {str(err).splitlines()[0]}") from err
    if xl and torch_dtype == torch.float16 and parts["vae"].config.force_upcast:
        parts["vae"] = parts["vae"].float()  # SDXL's VAE overflows in fp16; its pipeline runs it in fp32 too
    return SDComponents(
        **{name: part.to(dev) if isinstance(part, torch.nn.Module) else part for name, part in parts.items()},
        scheduler=build_ddim_scheduler(_prediction_type(folder)),
        identity=identity,
        zero_empty_prompt=xl and pipeline_index(folder).get("force_zeros_for_empty_prompt", True),
    )


def model_folder(
    source: str | None, path: str | None, revision: str | None = None, variant: str | None = None, key: str = "model"
) -> Path:
    """A local diffusers folder: ``path`` as given (checked), or the hub id ``source`` resolved through the Hugging Face
    cache, downloading only what is missing. Fails at once with one line naming ``<key>.path=`` when impossible."""
    return _local_folder(path, key) if path else _hub_folder(source, revision, variant, key)


def text_config_for(tokenizer: CLIPTokenizer, **size) -> CLIPTextConfig:
    """A ``CLIPTextConfig`` whose vocabulary, special tokens and context length match ``tokenizer``; ``size`` gives the
    width and depth (``hidden_size``, ``num_hidden_layers`` …)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=tokenizer.model_max_length,
        **size,
    )


def _local_folder(path: str, key: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{key}.path={path} is not a directory; point it at a diffusers model folder")
    pipeline = pipeline_index(folder).get("_class_name")
    required = (
        FLUX_COMPONENTS if pipeline in FLUX_PIPELINES else SD3_COMPONENTS if pipeline in SD3_PIPELINES else COMPONENTS
    )
    missing = [name for name in required if not (folder / name).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{key}.path={path} lacks {', '.join(f'{m}/' for m in missing)}; it must be a diffusers model folder"
        )
    return folder


def _hub_folder(source: str | None, revision: str | None, variant: str | None, key: str) -> Path:
    from huggingface_hub import snapshot_download

    if not source:
        raise ConfigError(f"no model given: set {key}.source=<hub id> or {key}.path=<local folder>")
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    patterns = ["model_index.json", "scheduler/*.json"]
    for name in (
        COMPONENTS + XL_COMPONENTS + ("transformer", "text_encoder_3", "tokenizer_3")
    ):  # patterns matching nothing (SD 1.5's *_2/) cost nothing
        patterns += [f"{name}/*.json", f"{name}/*.txt", f"{name}/*.model"]  # *.model: T5's SentencePiece vocabulary
        patterns += [f"{name}/{f.removesuffix('.safetensors')}{suffix}" for f in _WEIGHT_FILES]
        patterns += [f"{name}/*-of-*{suffix}"]  # sharded weights (FLUX's transformer and T5), beside their index
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - every hub failure gets the same actionable message
        raise ModelLoadError(
            f"weights for {source} are neither cached nor downloadable here ({type(err).__name__}); "
            f"download them where the hub is reachable (hf download {source}) and pass {key}.path=DIR"
        ) from None


def is_xl_folder(folder: Path) -> bool:
    """Whether a diffusers folder holds an SDXL pipeline: its ``model_index.json`` names one, or it has a
    ``text_encoder_2/``."""
    return "XL" in pipeline_index(folder).get("_class_name", "") or (folder / "text_encoder_2").is_dir()


def pipeline_index(folder: Path) -> dict:
    """The folder's ``model_index.json`` (which pipeline it was saved from, and its options), or ``{}``."""
    file = folder / "model_index.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _prediction_type(folder: Path) -> str:
    config_file = folder / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        return "epsilon"
    config = json.loads(config_file.read_text())
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLoadError(
            f"{folder} predicts {prediction!r}; MagicRemover's guidance is written for ε-prediction models "
            "(SD 1.5, SD 2.1-base)"
        )
    for key, value in SD_BETAS.items():
        if key in config and config[key] != value:
            raise ModelLoadError(f"{folder} was trained with {key}={config[key]}, not Stable Diffusion's {value}")
    return prediction


def _fingerprint(folder: Path) -> str:
    """Hash of the component configs plus size and head/tail bytes of every weight file (cheap, content-based)."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*/*")):
        if file.suffix in {".json", ".txt"}:
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in {".safetensors", ".bin"}:
            size = file.stat().st_size
            with open(file, "rb") as handle:
                head = handle.read(1 << 20)
                handle.seek(max(0, size - (1 << 20)))
                digest.update(f"{file.parent.name}/{file.name}:{size}".encode() + head + handle.read())
    return digest.hexdigest()[:16]


def _library_and_class(obj: object) -> list[str]:
    return [type(obj).__module__.split(".")[0], type(obj).__name__]


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
