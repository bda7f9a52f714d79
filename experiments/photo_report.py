"""Text alone against a mask in large photos: the held-out toy photos (``magicremover.toy.photos.held_out_photos``,
never used to choose a setting) removed text-only and with the object's mask, per framing strategy, scored inside and
outside the object against the ground truth, with paired bootstrap intervals.

    python -m magicremover.experiments.photo_report --photos 30 --out runs/photos --part 0 --parts 2 &   # resumable, row by row
    python -m magicremover.experiments.photo_report --photos 30 --out runs/photos --part 1 --parts 2
    python -m magicremover.experiments.photo_report --photos 30 --out runs/photos --summary             # the markdown table

``--margins 1.75,2.5,3.5 --first-seed 32000000`` runs a tuning set instead: mask and text, ``auto``, at each
``paste.crop_margin`` (the share of the model's square the object spans is its inverse), on photos drawn apart from
the held-out ones. ``--boxes 0.35,0.4,0.5 --first-seed 32000000 --photos 20`` locates only (no removal): the first
instance's finest box against the true one at each ``paste.locate_threshold``, how ``locate_threshold`` was chosen.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from magicremover import Pipeline
from magicremover.experiments._cli import apply_thread_default
from magicremover.experiments.toy_report import paired_interval
from magicremover.fullsize import choose_box, crop_box, longer_side, mask_box, model_input, whole
from magicremover.images import psnr
from magicremover.locate import locate
from magicremover.toy.photos import PHOTO_SEED, held_out_photo
from magicremover.types import RemovalSample

# name: (what the method is given: "mask", "text", or "text in the mask's crop", overrides of conf/remove.yaml)
VARIANTS = {
    "mask, auto": ("mask", []),
    "text, auto": ("text", []),
    "text, auto, no refining": ("text", ["paste.locate_passes=1"]),
    "text, auto, no tiles": ("text", ["paste.locate_tiles=1"]),
    "mask, resize": ("mask", ["paste.strategy=resize"]),
    "text, resize": ("text", ["paste.strategy=resize"]),
    # the removal alone: text only, on the square a mask frames (framing and locate taken out of the comparison)
    "text, the mask's crop": ("text in the mask's crop", ["paste.strategy=resize"]),
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


def variants(margins: str | None, only: list[str] | None = None) -> dict[str, tuple[str, list[str]]]:
    """``VARIANTS`` (those named in ``only``, when given), or with ``margins`` (comma-separated) mask and text,
    ``auto``, at each crop margin."""
    if not margins:
        unknown = sorted(set(only or []) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"error: --only {unknown[0]!r} is no variant; choose from {', '.join(VARIANTS)}")
        return {name: VARIANTS[name] for name in only} if only else VARIANTS
    return {
        f"{kind}, auto, margin {margin}": (kind, [f"paste.crop_margin={margin}"])
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
    chosen = variants(args.margins, args.only)
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
        for name, (given, _) in chosen.items():
            if (index, name) in done:
                continue
            start = time.perf_counter()
            output, record = _remove(pipes[name], photo, given, true)
            seconds = time.perf_counter() - start
            framings = [p["framing"] for p in record.get("passes", [record])]
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
                "locate_calls": record["unet_calls"].get("locate", {}).get("calls", 0),
                "seconds": seconds,
                **score(photo, output),
            }
            with open(rows_file, "a") as stream:
                stream.write(json.dumps(row) + "\n")
            print(f"photo {index} {name}: inside {row['inside']:.2f} dB, box error {row['box_error']}", flush=True)


def _remove(pipe: Pipeline, photo, given: str, true: tuple) -> tuple[Image.Image, dict]:
    """The photo with the object removed as ``given`` says, and the removal's record. ``text in the mask's crop``:
    text only, on the square the mask's box frames (``paste.crop_margin``), put back into the photo as it came out."""
    if given != "text in the mask's crop":
        removal = pipe(photo.image, photo.phrase, photo.caption, mask=photo.mask if given == "mask" else None)
        return removal.image, removal.record
    box, framing = choose_box(true, photo.image.size, pipe.side, replace(pipe.paste, strategy="crop"), "mask")
    part = pipe(photo.image.crop(box), photo.phrase, photo.caption)
    output = photo.image.copy()
    output.paste(part.image.convert("RGB"), box[:2])
    return output, part.record | {"framing": framing}


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
    """Text-only against the mask, split by how the first located instance sits: its box within ``LOCATED`` of the
    true box's longer side (framed as a mask would frame it), its box off by more but holding the object's centre
    (found, framed looser or tighter), or not holding it (a locate failure)."""
    close = f"box within {LOCATED * 100:g} %"
    split = {close: [], "box further off, centre held": [], "centre missed": []}
    for photo in photos:
        row, true = by[(photo, text)], by[(photo, text)]["true_box"]
        region, centre = row["region"], ((true[0] + true[2]) / 2, (true[1] + true[3]) / 2)
        held = region is not None and region[0] <= centre[0] <= region[2] and region[1] <= centre[1] <= region[3]
        framed = row["box_error"] is not None and row["box_error"] <= LOCATED * longer_side(true)
        name = close if framed else "box further off, centre held" if held else "centre missed"
        split[name].append(row["inside"] - by[(photo, REFERENCE)]["inside"])
    lines = []
    for name, values in split.items():
        if values:
            mean, low, high = paired_interval(values)
            lines.append(
                f"- {name} on {len(values)}/{len(photos)} photos: inside − mask, auto {mean:+.2f} "
                f"[{low:+.2f}, {high:+.2f}] dB"
            )
    return lines


def figure(photos: list[int], path: Path, first_seed: int = PHOTO_SEED, cell: int = 200) -> None:
    """A row per chosen photo, each panel the part of the photo around the object (4× its true box): the input with
    the true box (green) and every locate pass's box (the coarse pass blue, the finest red), as the default settings
    locate it; the text-only output with its crop (yellow); the output given the mask with its crop; the ground truth.
    Inside PSNR against the truth under each output."""
    pipe = Pipeline.from_pretrained("toy", "magicremover_fast", ["cache_dir=null"], "cpu")
    rows = []
    for index in photos:
        photo = held_out_photo(index, first_seed)
        true = mask_box(np.asarray(photo.mask) > 127)
        view = crop_box(true, photo.image.size, pipe.side, 4.0)
        scale = cell / (view[2] - view[0])
        chains = pipe.locate(photo.image, photo.phrase, photo.caption)
        text, masked = (pipe(photo.image, photo.phrase, photo.caption, mask=m) for m in (None, photo.mask))
        boxes = [(true, (40, 220, 40))]
        boxes += [(p.region, (255, 40, 40) if p is chain[-1] else (40, 120, 255)) for chain in chains for p in chain]
        panels = [
            (photo.image, boxes, f"photo {index}"),
            (text.image, _crops(text.record), f"text {score(photo, text.image)['inside']:.1f} dB"),
            (masked.image, _crops(masked.record), f"mask {score(photo, masked.image)['inside']:.1f} dB"),
            (photo.truth, [], "truth"),
        ]
        row = Image.new("RGB", (len(panels) * (cell + 4) - 4, cell), "white")
        for number, (image, drawn, label) in enumerate(panels):
            panel = image.convert("RGB").crop(view).resize((cell, cell), Image.Resampling.LANCZOS)
            draw = ImageDraw.Draw(panel)
            for box, colour in drawn:
                draw.rectangle([round((v - view[k % 2]) * scale) for k, v in enumerate(box)], outline=colour, width=2)
            draw.text((4, 4), label, fill=(255, 255, 255))
            row.paste(panel, (number * (cell + 4), 0))
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, len(rows) * (cell + 4) - 4), "white")
    for number, row in enumerate(rows):
        sheet.paste(row, (0, number * (cell + 4)))
    sheet.save(path)


def _crops(record: dict) -> list[tuple[list[int], tuple[int, int, int]]]:
    framings = [p["framing"] for p in record.get("passes", [record])]
    return [(f["crop"], (255, 210, 0)) for f in framings if f.get("crop")]


def boxes(args) -> str:
    """Locate only, at each of ``args.boxes`` (comma-separated ``paste.locate_threshold`` levels): one JSON line per
    photo in ``OUT/boxes.jsonl`` (the true box, each level's instances as their passes' regions), then per level the
    located box's longer side over the true box's (median and 10–90 %) and the photos with several instances."""
    apply_thread_default()
    pipe = Pipeline.from_pretrained("toy", args.method, ["cache_dir=null"], "cpu")
    levels, s, rows = [float(v) for v in args.boxes.split(",")], pipe.paste, []
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for index in range(args.photos):
        photo, readings = held_out_photo(index, args.first_seed), {}

        def attend(square, photo=photo, readings=readings):  # one UNet call per square, whatever the level
            key = square.tobytes()
            if key not in readings:
                sample = RemovalSample(image=square, prompt=photo.caption, target=photo.phrase)
                readings[key] = pipe.remover.locate(sample)
            return readings[key]

        row = {"photo": index, "true_box": list(mask_box(np.asarray(photo.mask) > 127)), "located": {}}
        for level in levels:
            found = locate(
                photo.image, pipe.side, attend, level, s.crop_margin, s.locate_passes, s.instances, s.locate_tiles
            )
            row["located"][str(level)] = [[list(p.region) for p in chain] for chain in found]
        rows.append(row)
        with open(Path(args.out) / "boxes.jsonl", "a") as stream:
            stream.write(json.dumps(row) + "\n")
    lines = [
        "| locate_threshold | located / true side, median [10 %, 90 %] | photos with several instances |",
        "|---|---|---|",
    ]
    for level in levels:
        found = [(r["located"][str(level)], longer_side(r["true_box"])) for r in rows if r["located"][str(level)]]
        ratios = [longer_side(chains[0][-1]) / true for chains, true in found]
        low, median, high = np.percentile(ratios, [10, 50, 90])
        several = sum(len(chains) > 1 for chains, _ in found)
        lines.append(f"| {level} | {median:.2f} [{low:.2f}, {high:.2f}] | {several}/{len(rows)} |")
    return "\n".join(lines)


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
    parser.add_argument("--only", action="append", help="run only this variant (repeat for several)")
    parser.add_argument("--boxes", help="comma-separated locate thresholds: locate only, located against true boxes")
    parser.add_argument("--figure", help="PNG path: the --figure-photos with their true and located boxes")
    parser.add_argument("--figure-photos", default="7,25,2,0", help="comma-separated held-out photo indices")
    args = parser.parse_args()
    if not args.figure and not args.out:
        parser.error("--out DIR is needed to run or to sum up (only --figure needs none)")
    if args.figure:
        figure([int(i) for i in args.figure_photos.split(",")], Path(args.figure), args.first_seed)
    elif args.summary:
        print(summary(Path(args.out)))
    elif args.boxes:
        print(boxes(args))
    else:
        run(args)


if __name__ == "__main__":
    main()
