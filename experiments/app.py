"""A web demo: upload a photo, type its caption, tick the word(s) to remove, and see input | attention | mask | output.

    python -m magicremover.experiments.app                          # the embedded toy model, http://127.0.0.1:7860
    python -m magicremover.experiments.app model=sd15 server.port=8000

The model loads once; each run builds the chosen method on it (cheap) with the knobs on the page. Every run's
full-size ``output.png`` is also kept, in a folder of its own under ``outputs/app/<start time>/`` (named by the
run's time).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the demo must run offline

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from magicremover.api import Pipeline  # noqa: E402
from magicremover.config import CONFIG_DIR, build_remover, compose_config  # noqa: E402
from magicremover.errors import UserError  # noqa: E402
from magicremover.experiments._cli import check_argv, run_entry_point  # noqa: E402
from magicremover.experiments.remove import EXAMPLE_PROMPT, example_image  # noqa: E402
from magicremover.fullsize import STRATEGIES  # noqa: E402
from magicremover.method.settings import Settings  # noqa: E402
from magicremover.outputs import save_image  # noqa: E402

METHODS = ("magicremover", "magicremover_fast", "magicremover_paper", "magicremover_coco", "p2p_reweight")
DEFAULTS = Settings()  # the sliders start at the method's defaults (one source: the dataclass)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def caption_words(caption: str) -> list[str]:
    """The words of a caption, in order and without repeats: the choices of the word picker."""
    return list(dict.fromkeys(_WORD.findall(caption or "")))


def drawn_mask(editor: dict | None) -> Image.Image | None:
    """The strokes painted on the mask editor as a white-on-black mask of the photo's size, or ``None`` if none."""
    layers = (editor or {}).get("layers") or []
    painted = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in layers if layer is not None]
    if not painted or not any(p.any() for p in painted):
        return None
    return Image.fromarray((np.logical_or.reduce(painted) * 255).astype(np.uint8))


def framed(image: Image.Image, record: dict) -> Image.Image:
    """The input with each pass's coarser locate boxes in blue, its located (or masked) object region in red and,
    where one was used, its crop in yellow."""
    shown = image.convert("RGB")
    draw = ImageDraw.Draw(shown)
    width = max(1, round(max(shown.size) / 200))
    for single in record.get("passes") or [record]:
        framing = single.get("framing") or {}
        for coarser in (framing.get("locate") or [])[:-1]:
            draw.rectangle(coarser["region"], outline=(40, 120, 255), width=width)
        if framing.get("crop"):
            draw.rectangle(framing["crop"], outline=(255, 210, 0), width=width)
        if framing.get("region"):
            draw.rectangle(framing["region"], outline=(255, 40, 40), width=width)
    return shown


def new_run_folder(root: Path) -> Path:
    """A folder of one run's own under ``root``: its start time, then ``-2``, ``-3``, … for runs in the same second
    (``mkdir`` either creates or fails, so queued or concurrent runs never share a folder)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%H-%M-%S")
    for number in itertools.count(1):
        folder = root / (stamp if number == 1 else f"{stamp}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


class Demo:
    """The loaded model and what one click runs.

    Args:
        cfg: the composed ``conf/app.yaml``.
        out_dir: where every run's files are written.
        inversion: the app's own ``inversion=``/``inversion.*`` command-line overrides, passed on to every method;
            without them each preset inverts as it chooses (``magicremover_fast``: negative-prompt inversion).
    """

    def __init__(self, cfg: DictConfig, out_dir: Path, inversion: list[str] | tuple[str, ...] = ()):
        self.cfg, self.out_dir, self.inversion = cfg, out_dir, list(inversion)
        self.components = instantiate(cfg.model)

    def pipeline(self, method: str, steps: int, lambda_: float, threshold: float, strategy: str = "auto") -> Pipeline:
        """The chosen method on the loaded model, with the page's knobs."""
        overrides = [f"method={method}", f"num_inference_steps={int(steps)}", f"device={self.cfg.device}"]
        overrides += [f"paste.strategy={strategy}"]
        overrides += [f"cache_dir={self.cfg.cache_dir}" if self.cfg.cache_dir else "cache_dir=null"]
        cfg = compose_config("remove", overrides + self.inversion)
        for key, value in (("lambda_", lambda_), ("mask_threshold", threshold)):  # the page's sliders, where they apply
            if key in cfg.method:
                cfg.method[key] = value
        cfg.model = self.cfg.model
        return Pipeline(cfg, build_remover(cfg, components=self.components))

    def run(self, photo, caption, words, method, steps, lambda_, threshold, strategy, editor):
        """One removal of every ticked word: ``(input with the crop drawn, attention, mask, output, output file,
        record)``; a user error becomes a one-line message on the page."""
        import gradio as gr

        if photo is None:
            raise gr.Error("upload a photo or pick the example first")
        words = [words] if isinstance(words, str) else list(words or [])
        if not words:
            raise gr.Error("tick the word(s) of the caption that name the object(s) to remove")
        mask = drawn_mask(editor)
        try:
            pipe = self.pipeline(method, steps, lambda_, threshold, strategy)
            removal = pipe(photo, words, caption, mask=[mask] * len(words) if mask else None, name="photo")
        except UserError as err:
            raise gr.Error(str(err)) from None
        folder = new_run_folder(self.out_dir)
        save_image(removal.image, folder / "output.png")
        shown = framed(removal.input, removal.record)
        return shown, removal.attention, removal.mask, removal.image, str(folder / "output.png"), removal.record


def build(demo: Demo):
    """The page."""
    import gradio as gr

    with gr.Blocks(title="MagicRemover") as page:
        gr.Markdown(
            "## MagicRemover — remove an object by naming it\n"
            "Upload a photo, write a caption that names the object, click the word, run. "
            f"Model: `{OmegaConf.select(demo.cfg, 'model._target_')}`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.Image(type="pil", label="Photo", elem_id="photo", sources=["upload", "clipboard"])
                caption = gr.Textbox(label="Caption naming the object", value=EXAMPLE_PROMPT, elem_id="caption")
                word = gr.CheckboxGroup(
                    caption_words(EXAMPLE_PROMPT), value=["circle"], label="Word(s) to remove", elem_id="word"
                )
                gr.Examples([[str(example_image()), EXAMPLE_PROMPT]], inputs=[photo, caption])
            with gr.Column(scale=1):
                method = gr.Dropdown(list(METHODS), value="magicremover", label="Method", elem_id="method")
                steps = gr.Slider(
                    5, 100, value=demo.cfg.num_inference_steps, step=1, label="DDIM steps", elem_id="steps"
                )
                lambda_ = gr.Slider(0.0, 0.99, value=DEFAULTS.lambda_, step=0.01, label="λ (top-region quantile)")
                threshold = gr.Slider(0.05, 0.95, value=DEFAULTS.mask_threshold, step=0.01, label="M₀ threshold")
                strategy = gr.Radio(
                    list(STRATEGIES), value="auto", label="Framing (crop: around the object)", elem_id="strategy"
                )
                editor = gr.ImageMask(type="pil", label="Optional: paint the object (mask mode)", elem_id="editor")
                run = gr.Button("Remove", variant="primary", elem_id="run")
        with gr.Row():
            shown = [
                gr.Image(type="pil", format="png", label=label, elem_id=key, interactive=False)
                for key, label in (
                    ("input", "Input (coarse locate blue, object red, crop yellow)"),
                    ("attention", "Attention of the word"),
                    ("mask", "Mask"),
                    ("output", "Output"),
                )
            ]
        download = gr.File(label="Output at full size (PNG)", elem_id="download")
        record = gr.JSON(label="What ran", elem_id="record")

        caption.change(lambda text: gr.CheckboxGroup(choices=caption_words(text), value=[]), caption, word)
        photo.change(lambda image: image, photo, editor)

        def on_run(*args, progress=gr.Progress(track_tqdm=True)):  # the bars of inversion and denoising show up
            return demo.run(*args)

        run.click(
            on_run,
            [photo, caption, word, method, steps, lambda_, threshold, strategy, editor],
            [*shown, download, record],
        )
    return page


def serve(cfg: DictConfig, out_dir: Path) -> None:
    """Load the model and serve the page until interrupted."""
    inversion = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith(("inversion=", "inversion."))]
    page = build(Demo(cfg, out_dir, inversion))
    page.queue().launch(
        server_name=cfg.server.host,
        server_port=cfg.server.port,
        share=False,
        show_error=True,
        allowed_paths=[str(out_dir.resolve())],
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="app")
def main(cfg: DictConfig) -> None:
    run_entry_point(serve, cfg)


def cli() -> None:
    """``magicremover-app``, the same command as ``python -m magicremover.experiments.app``."""
    check_argv()
    main()


if __name__ == "__main__":
    cli()
