"""Text alone against a mask in large photos: the held-out toy photos (``magicremover.toy.photos.held_out_photos``,
never used to choose a setting) removed text-only and with the object's mask, per framing strategy, scored inside and
outside the object against the ground truth, with paired bootstrap intervals.

    python -m magicremover.experiments.photo_report --photos 30 --out runs/photos --part 0 --parts 2 &   # resumable, row by row
    python -m magicremover.experiments.photo_report --photos 30 --out runs/photos --part 1 --parts 2
    python -m magicremover.experiments.photo_report --photos 30 --out runs/photos --summary             # the markdown table

``--margins 1.75,2.5,3.5 --first-seed 32000000`` runs a tuning set instead: mask and text, ``auto``, at each
``paste.crop_margin`` (the share of the model's square the object spans is its inverse), on photos drawn apart from
the held-out ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from magicremover import Pipeline
from magicremover.experiments._cli import apply_thread_default
from magicremover.experiments.toy_report import paired_interval
from magicremover.fullsize import mask_box, model_input, whole
from magicremover.images import psnr
from magicremover.locate import locate
from magicremover.toy.photos import PHOTO_SEED, held_out_photo
from magicremover.types import RemovalSample

# name: (give the mask, overrides of conf/remove.yaml)
VARIANTS = {
    "mask, auto": (True, []),
    "text, auto": (False, []),
    "text, auto, coarse locate only": (False, ["paste.locate_passes=1"]),
    "mask, resize": (True, ["paste.strategy=resize"]),
    "text, resize": (False, ["paste.strategy=resize"]),
}
REFERENCE = "mask, auto"
LOCATED = 0.25  # a located box within this fraction of the true box's longer side found the object


def score(photo, output: Image.Image) -> dict:
    """Inside (the object and its shadow) and outside PSNR against the ground truth, and the squeeze ceiling inside
    (the ground truth through the model's 64² square and back: the best a ``resize`` output can be)."""
    inside, truth = np.asarray(photo.mask) > 127, np.asarray(photo.truth)
    squeezed = model_input(photo.truth, whole(photo.truth.size), 64).resize(photo.truth.size, Image.Resampling.BICUBIC)
    out = np.asarray(output.convert("RGB"))
    return {
        "inside": psnr(out, truth, inside),
        "outside": psnr(out, truth, ~inside),
        "input_inside": psnr(np.asarray(photo.image), truth, inside),
        "ceiling_inside": psnr(np.asarray(squeezed), truth, inside),
    }


def variants(margins: str | None) -> dict[str, tuple[bool, list[str]]]:
    """``VARIANTS``, or with ``margins`` (comma-separated) mask and text, ``auto``, at each crop margin."""
    if not margins:
        return VARIANTS
    return {
        f"{kind}, auto, margin {margin}": (kind == "mask", [f"paste.crop_margin={margin}"])
        for margin in margins.split(",")
        for kind in ("mask", "text")
    }


def run(args) -> None:
    """Every (photo, variant) of this part not yet in its rows file, one JSON line each as it finishes."""
    apply_thread_default()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / f"rows-{args.part}.jsonl"
    done = {(r["photo"], r["variant"]) for r in _rows(out)}
    chosen = variants(args.margins)
    pipes = {
        name: Pipeline.from_pretrained(
            "toy", args.method, [f"num_inference_steps={args.steps}", "cache_dir=null", *overrides], "cpu"
        )
        for name, (_, overrides) in chosen.items()
    }
    for index in range(args.part, args.photos, args.parts):
        if all((index, name) in done for name in chosen):
            continue
        photo = held_out_photo(index, args.first_seed)
        true = mask_box(np.asarray(photo.mask) > 127)
        for name, (with_mask, _) in chosen.items():
            if (index, name) in done:
                continue
            start = time.perf_counter()
            removal = pipes[name](photo.image, photo.phrase, photo.caption, mask=photo.mask if with_mask else None)
            seconds = time.perf_counter() - start
            framings = [p["framing"] for p in removal.record.get("passes", [removal.record])]
            region = framings[0].get("region")
            row = {
                "photo": index,
                "variant": name,
                "size": list(photo.image.size),
                "phrase": photo.phrase,
                "true_box": list(true),
                "region": region,
                "used": [f["used"] for f in framings],
                "box_error": max(abs(a - b) for a, b in zip(region, true)) if region else None,
                "locate_calls": removal.record["unet_calls"].get("locate", {}).get("calls", 0),
                "seconds": seconds,
                **score(photo, removal.image),
            }
            with open(rows_file, "a") as stream:
                stream.write(json.dumps(row) + "\n")
            print(f"photo {index} {name}: inside {row['inside']:.2f} dB, box error {row['box_error']}", flush=True)


def summary(out: Path) -> str:
    """The table: per variant, mean inside / outside PSNR and the paired difference to ``REFERENCE`` (else the first
    variant) inside."""
    rows = _rows(out)
    if not rows:
        raise SystemExit(f"error: no rows-*.jsonl rows in {out}; run the report into it first")
    by = {(r["photo"], r["variant"]): r for r in rows}
    names = list(dict.fromkeys(r["variant"] for r in rows))
    reference = REFERENCE if REFERENCE in names else names[0]
    photos = sorted({r["photo"] for r in rows if all((r["photo"], v) in by for v in names)})
    lines = [
        f"{len(photos)} photos; inside/outside PSNR (dB) against the ground truth, mean; paired difference to "
        f"'{reference}' inside with its 95 % bootstrap interval",
        "",
        f"| variant | inside | outside | inside − {reference} [95 % CI] | box error (px), median | crop used | "
        "locate calls | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        picked = [by[(p, name)] for p in photos]
        diff = paired_interval([r["inside"] - by[(r["photo"], reference)]["inside"] for r in picked])
        errors = [r["box_error"] for r in picked if r["box_error"] is not None]
        crops = sum("crop" in r["used"] for r in picked)
        lines.append(
            f"| {name} | {np.mean([r['inside'] for r in picked]):.2f} | {np.mean([r['outside'] for r in picked]):.2f} "
            f"| {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}] | {np.median(errors) if errors else '–'} "
            f"| {crops}/{len(picked)} | {np.mean([r['locate_calls'] for r in picked]):.1f} "
            f"| {np.mean([r['seconds'] for r in picked]):.1f} |"
        )
    if {REFERENCE, "text, auto"} <= set(names):
        lines += ["", *_where_it_fails(by, photos)]
    first = [by[(p, reference)] for p in photos]
    lines += [
        "",
        f"input inside {np.mean([r['input_inside'] for r in first]):.2f} dB; squeeze ceiling inside, median "
        f"{np.median([r['ceiling_inside'] for r in first]):.2f} dB (148 dB: the squeeze loses nothing inside)",
    ]
    return "\n".join(lines)


def _where_it_fails(by: dict, photos: list[int], text: str = "text, auto") -> list[str]:
    """Text-only against the mask, split by whether the locate passes found the object (the first instance's box
    within ``LOCATED`` of the true box's longer side): a miss is a locate failure, a gap where it was found is the
    removal's (or the framing's)."""
    found, missed = [], []
    for photo in photos:
        row, true = by[(photo, text)], by[(photo, text)]["true_box"]
        side = max(true[2] - true[0], true[3] - true[1])
        hit = row["box_error"] is not None and row["box_error"] <= LOCATED * side
        (found if hit else missed).append(row["inside"] - by[(photo, REFERENCE)]["inside"])
    lines = []
    for name, values in (("located", found), ("missed", missed)):
        if values:
            mean, low, high = paired_interval(values)
            lines.append(
                f"- {name} on {len(values)}/{len(photos)} photos: inside − mask, auto {mean:+.2f} "
                f"[{low:+.2f}, {high:+.2f}] dB"
            )
    return lines


def figure(photos: list[int], path: Path, width: int = 360) -> None:
    """The chosen held-out photos side by side, each with the object's true box (green) and every locate pass's box
    (the coarse pass blue, the finest red), as the default settings locate it (3 UNet calls at most each)."""
    pipe = Pipeline.from_pretrained("toy", "magicremover_fast", ["cache_dir=null"], "cpu")
    settings, panels = pipe.paste, []
    for index in photos:
        photo = held_out_photo(index)

        def attend(square, photo=photo):
            return pipe.remover.locate(RemovalSample(image=square, prompt=photo.caption, target=photo.phrase))

        chains = locate(
            photo.image,
            pipe.side,
            attend,
            settings.threshold,
            settings.crop_margin,
            settings.locate_passes,
            settings.instances,
        )
        scale = width / photo.image.width
        panel = photo.image.resize((width, round(photo.image.height * scale)), Image.Resampling.LANCZOS)
        draw = ImageDraw.Draw(panel)
        boxes = [(mask_box(np.asarray(photo.mask) > 127), (40, 220, 40))]
        boxes += [(p.region, (255, 40, 40) if p is chain[-1] else (40, 120, 255)) for chain in chains for p in chain]
        for box, colour in boxes:
            draw.rectangle([round(v * scale) for v in box], outline=colour, width=2)
        draw.text((4, 4), f"photo {index}", fill=(255, 255, 255))
        panels.append(panel)
    height = max(p.height for p in panels)
    sheet = Image.new("RGB", (width * len(panels) + 4 * (len(panels) - 1), height), "white")
    for number, panel in enumerate(panels):
        sheet.paste(panel, (number * (width + 4), 0))
    sheet.save(path)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for file in sorted(Path(out).glob("rows-*.jsonl")) for line in file.open() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=30)
    parser.add_argument("--out")
    parser.add_argument("--method", default="magicremover_fast")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--first-seed", type=int, default=PHOTO_SEED)
    parser.add_argument("--margins", help="comma-separated crop margins: a tuning run of mask and text at each")
    parser.add_argument("--figure", help="PNG path: the --figure-photos with their true and located boxes")
    parser.add_argument("--figure-photos", default="2,7,0,13", help="comma-separated held-out photo indices")
    args = parser.parse_args()
    if not args.figure and not args.out:
        parser.error("--out DIR is needed to run or to sum up (only --figure needs none)")
    if args.figure:
        figure([int(i) for i in args.figure_photos.split(",")], Path(args.figure))
    elif args.summary:
        print(summary(Path(args.out)))
    else:
        run(args)


if __name__ == "__main__":
    main()
