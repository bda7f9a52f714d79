"""Shared fixtures. The environment is forced offline before transformers/diffusers are imported."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-thread torch collapses ~40x when the other core is busy

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny():
    """The tiny random SD-architecture model (built once; tests must leave it as they found it)."""
    from magicremover.tiny import build_tiny

    return build_tiny(seed=0, device="cpu")


@pytest.fixture(scope="session")
def tiny_xl():
    """The tiny random SDXL-architecture model (built once; tests must leave it as they found it)."""
    from magicremover.tiny import build_tiny_xl

    return build_tiny_xl(seed=0, device="cpu")


@pytest.fixture(scope="session")
def toy():
    """The committed toy model (loaded once; tests must leave it as they found it)."""
    from magicremover.toy import load_toy

    return load_toy(device="cpu")


@pytest.fixture(scope="session")
def example_image() -> Image.Image:
    from magicremover.experiments.remove import example_image

    return Image.open(example_image()).convert("RGB")


@pytest.fixture
def image_tensor(tiny, example_image) -> torch.Tensor:
    from magicremover.images import fit_to_model

    return fit_to_model(example_image, tiny.resolution)


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory):
    """A COCO-layout folder: RGB, grayscale and CMYK images; polygon and crowd-RLE annotations; categories with a
    two-word name ("fire hydrant": fire, hydr, ant) and a multi-token word ("surfboard": surf, board)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rgb = Image.new("RGB", (80, 60), (90, 120, 150))
    ImageDraw.Draw(rgb).rectangle([10, 10, 30, 40], fill=(200, 40, 40))
    rgb.save(root / "val2017" / "000000000001.jpg")
    Image.new("L", (64, 64), 128).save(root / "val2017" / "000000000002.png")
    Image.new("CMYK", (48, 48), (0, 80, 80, 0)).save(root / "val2017" / "000000000003.jpg")
    crowd = np.zeros((64, 64), dtype=np.uint8)
    crowd[20:40, 5:25] = 1
    counts, flat, value, run = [], crowd.flatten(order="F"), 0, 0
    for pixel in flat:  # uncompressed RLE, column-major, starting with zeros
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 80, "height": 60},
            {"id": 2, "file_name": "000000000002.png", "width": 64, "height": 64},
            {"id": 3, "file_name": "000000000003.jpg", "width": 48, "height": 48},
        ],
        "categories": [{"id": 11, "name": "fire hydrant"}, {"id": 42, "name": "surfboard"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 11,
                "iscrowd": 0,
                "area": 600.0,
                "bbox": [10, 10, 20, 30],
                "segmentation": [[10, 10, 30, 10, 30, 40, 10, 40]],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 18,
                "iscrowd": 0,
                "area": 100.0,
                "bbox": [50, 30, 10, 10],
                "segmentation": [[50, 30, 60, 30, 60, 40, 50, 40]],
            },
            {
                "id": 3,
                "image_id": 2,
                "category_id": 42,
                "iscrowd": 1,
                "area": 400.0,
                "bbox": [5, 20, 20, 20],
                "segmentation": {"counts": counts, "size": [64, 64]},
            },
            {
                "id": 4,
                "image_id": 3,
                "category_id": 18,
                "iscrowd": 0,
                "area": 100.0,
                "bbox": [4, 4, 10, 10],
                "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]],
            },
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


class TinyLaMa(torch.nn.Module):
    """Same signature and conventions as big-lama.pt, at toy size (one FFT round trip like LaMa's FFC blocks)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.out = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, image, mask):
        x = self.inp(torch.cat([image * (1 - mask), mask], dim=1))
        x = torch.fft.irfftn(torch.fft.rfftn(x, dim=(-2, -1)), s=x.shape[-2:], dim=(-2, -1))
        predicted = torch.sigmoid(self.out(torch.relu(x)))
        return mask * predicted + (1 - mask) * image


@pytest.fixture(scope="session")
def lama_weights(tmp_path_factory):
    """A traced TorchScript stand-in of big-lama.pt."""
    path = tmp_path_factory.mktemp("lama") / "tiny-lama.pt"
    traced = torch.jit.trace(TinyLaMa(), (torch.rand(1, 3, 64, 64), torch.zeros(1, 1, 64, 64)))
    traced.save(str(path))
    return path


@pytest.fixture(scope="session")
def pytorch_fid_weights(tmp_path_factory):
    """pytorch-fid's ``pt_inception`` file with the real key layout and random values (built without any download),
    and the state dict it holds."""
    from unittest import mock

    from pytorch_fid import inception as pytorch_fid

    with (
        mock.patch.object(pytorch_fid, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, state, *a, **k: None),
    ):
        template = pytorch_fid.fid_inception_v3().state_dict()
    generator = torch.Generator().manual_seed(0)

    def randomised(key: str, value: torch.Tensor) -> torch.Tensor:
        # He-scaled convolutions and near-identity batch norms, so pool3 features still depend on the input
        if not value.is_floating_point():
            return value
        if value.ndim == 4:
            return torch.randn(value.shape, generator=generator) * (2 / value[0].numel()) ** 0.5
        if key.endswith(("running_var", "bn.weight")):
            return 1 + 0.1 * torch.rand(value.shape, generator=generator)
        return 0.01 * torch.randn(value.shape, generator=generator)

    state = {key: randomised(key, value) for key, value in template.items()}
    path = tmp_path_factory.mktemp("pytorch_fid") / "pt_inception-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="session")
def inpaint_dir(tmp_path_factory):
    """A tiny SD-inpainting folder: the real classes and layout (9-channel UNet), random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from magicremover.clip_tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    pipe = StableDiffusionInpaintPipeline(
        vae, text, tokenizer, unet, PNDMScheduler(skip_prk_steps=True), None, None, requires_safety_checker=False
    )
    folder = tmp_path_factory.mktemp("sd-inpaint")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_vocab(tmp_path_factory):
    """A 64-token BERT-uncased-style WordPiece vocabulary folder."""
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "remove",
        "the",
        "a",
        "red",
        "circle",
        "dog",
        "on",
        "stripes",
    ]
    words += [f"tok{i}" for i in range(64 - len(words))]
    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 77}))
    return folder


@pytest.fixture(scope="session")
def inst_inpaint_weights(tmp_path_factory):
    """A tiny random Inst-Inpaint in our converted format (.safetensors recording its architecture)."""
    from magicremover.baselines.inst_inpaint import Architecture, InstInpaintModel

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("inst_inpaint") / "inst-inpaint-tiny.safetensors"
    InstInpaintModel(Architecture.named("tiny")).save(path, "tiny")
    return path


# The longest modules first: with ``-n 2 --dist loadscope`` (the README's command) a module runs on one worker, so
# one started last would run alone at the end while the other worker idles.
LONG_MODULES = (
    "test_toy_behaviour.py",
    "test_slurm.py",
    "test_notebooks.py",
    "test_research_loop.py",
    "test_report.py",
    "test_shards.py",
    "test_storage.py",
    "test_api.py",
    "test_cli_remove.py",
    "test_locate.py",
    "test_photo_runs.py",
    "test_app.py",
)


def pytest_collection_modifyitems(items):
    items.sort(
        key=lambda item: LONG_MODULES.index(item.path.name) if item.path.name in LONG_MODULES else len(LONG_MODULES)
    )
