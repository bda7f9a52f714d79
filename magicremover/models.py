"""The model zoo: Stable Diffusion components from the hub, a local folder, or built tiny and random.

Every model, whatever its source, comes back as :class:`SDComponents` with frozen weights, the DDIM scheduler
built with SD's settings, and a :class:`~magicremover.unet_calls.UNetCalls` counter on its UNet.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.errors import ConfigError, ModelLoadError
from magicremover.unet_calls import UNetCalls

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
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
        calls: per-stage UNet call counter.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    identity: str
    calls: UNetCalls = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for module in (self.unet, self.vae, self.text_encoder):
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
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.5, 64 for the toy and tiny models)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write a diffusers-format folder that :func:`load_pretrained` (``model.path=``) reads back.

        Args:
            directory: the folder to write.
            dtype: store the weights in this precision (e.g. ``torch.float16`` to halve the files); the loader casts
                them to the dtype it is asked for.
        """
        directory = Path(directory)
        for name in COMPONENTS:
            part = getattr(self, name)
            if dtype is not None and isinstance(part, torch.nn.Module):
                part = copy.deepcopy(part).to(dtype)
            part.save_pretrained(directory / name)
        self.scheduler.save_pretrained(directory / "scheduler")
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _version("diffusers")}
        index |= {name: _library_and_class(getattr(self, name)) for name in (*COMPONENTS, "scheduler")}
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
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
    if c.unet.config.cross_attention_dim != c.text_encoder.config.hidden_size:
        raise ModelLoadError(
            f"UNet cross_attention_dim {c.unet.config.cross_attention_dim} != text encoder hidden size "
            f"{c.text_encoder.config.hidden_size}: the components come from different models"
        )
    if c.unet.config.in_channels != c.vae.config.latent_channels:
        raise ModelLoadError(
            f"UNet takes {c.unet.config.in_channels} channels but the VAE makes {c.vae.config.latent_channels}: "
            "inpainting UNets (9 channels) are for method=sd_inpaint, not for inversion"
        )
    if c.tokenizer.model_max_length > c.text_encoder.config.max_position_embeddings:
        raise ModelLoadError("tokenizer context is longer than the text encoder's position embeddings")


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
) -> SDComponents:
    """Load SD components from a local diffusers folder (``path``) or a hub id (``source``).

    A hub id is looked up in the local Hugging Face cache first and downloaded only if missing; when that is
    impossible (offline, no network) this fails at once with one line naming ``model.path=``.

    Args:
        source: hub id, e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``.
        path: a local folder with ``unet/ vae/ text_encoder/ tokenizer/``; wins over ``source``.
        revision: hub revision (branch, tag or commit).
        variant: weight variant to read, e.g. ``fp16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` …
        dtype: ``auto``, ``float32``, ``float16``, ``bfloat16``.
    """
    folder = model_folder(source, path, revision, variant)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs = {"torch_dtype": torch_dtype, "variant": variant}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the model from {folder}: {str(err).splitlines()[0]}") from err
    return SDComponents(
        unet=unet.to(dev),
        vae=vae.to(dev),
        text_encoder=text_encoder.to(dev),
        tokenizer=tokenizer,
        scheduler=build_ddim_scheduler(_prediction_type(folder)),
        identity=f"{source if not path else 'local'}:{_fingerprint(folder)}:{variant}:{torch_dtype}",
    )


def build_tiny(seed: int = 0, device: str = "auto", dtype: str = "float32") -> SDComponents:
    """A random-weight model with SD's architecture at toy size, built offline and deterministically.

    UNet with cross-attention at two resolutions plus the mid block (7 self- and 7 cross-attention layers),
    an f8 ``AutoencoderKL`` (64 px images ↔ 8×8×4 latents, like SD's geometry), a 5-layer CLIP text encoder over
    the real 49,408-token tokenizer. About 2.6 M parameters; a UNet call takes milliseconds on a CPU.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
        scaling_factor=4.5,  # random-init latents have std ≈ 0.22; SD scales its latents to std ≈ 1
    )
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        text_config_for(tokenizer, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5)
    )
    unet, vae, text_encoder = (
        m.to(dev) if torch_dtype == torch.float32 else m.to(dev, torch_dtype) for m in (unet, vae, text_encoder)
    )
    return SDComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=build_ddim_scheduler(),
        identity=f"tiny:seed={seed}:{torch_dtype}",
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
    missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
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
    for name in COMPONENTS:
        patterns += [f"{name}/*.json", f"{name}/*.txt"] + [
            f"{name}/{f.removesuffix('.safetensors')}{suffix}" for f in _WEIGHT_FILES
        ]
    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - every hub failure gets the same actionable message
        raise ModelLoadError(
            f"weights for {source} are neither cached nor downloadable here ({type(err).__name__}); "
            f"download them where the hub is reachable (hf download {source}) and pass {key}.path=DIR"
        ) from None


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
