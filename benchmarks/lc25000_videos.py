"""Arrange the LC25000 lung development subset as "videos" in which few frames carry the label.

    .venv/bin/python benchmarks/lc25000_videos.py OUT_DIR [--data DIR] [--seed 27]
                     [--tissue-per-video 2] [--frames-per-video 10] [--size 128]

Evidence for issue 27 (bag models): Quilt-1M's label belongs to a video, and most of a video's
frames show the lecturer or slides of text, not the tissue the narration names. Here each video
holds ``--tissue-per-video`` real tiles of one class (disjoint tiles, never reused) and
``--frames-per-video`` minus that many non-tissue frames drawn here: "text slides" (light page,
dark lines of varying length, a title bar) and "lecturer" frames (a smooth background, a face-like
ellipse and a body). Every frame carries its video's label, as Quilt's frames do.

Honesty rules:
- the distractors are synthetic and far easier to tell from tissue than Quilt's real frames; the
  set measures whether a bag model finds the tissue frames and reads them, not how much that helps
  on Quilt;
- every distractor is drawn with its own random layout (no two share a hash: the workflow's
  near-duplicate grouping must not join videos through them; `filter_report.json` says so);
- NOT removed: LC25000's own leakage (rotated / flipped copies of one original tile can land in
  different videos and splits), so scores are optimistic and never a ranking.

Writes below OUT_DIR (outside the repository; the source tiles are copied at --size px, never into
the repository): ``frames/vNNN_FF.jpg``, ``metadata.csv`` (path, label, group, kind) and
``summary.json``. When the LC25000 folder is absent it prints why and exits 0 without writing.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lc25000-lung-dev"
EXTENSIONS = (".jpg", ".jpeg", ".png")


def smooth_field(size: int, rng: random.Random, low: int, high: int) -> Image.Image:
    """A random smooth colour field (a 4x4 grid of colours, bicubic-upscaled): a page or a room.
    Flat backgrounds would hash alike and join every video through the near-duplicate grouping."""
    base = [rng.randint(low, high) for _ in range(3)]
    cells = []
    for _ in range(16):  # brightness varies cell by cell, so the field's gradients are random
        scale = rng.uniform(0.55, 1.0)
        cells.append(tuple(int(c * scale) for c in base))
    grid = Image.new("RGB", (4, 4))
    grid.putdata(cells)
    return grid.resize((size, size), Image.Resampling.BICUBIC)


def text_slide(size: int, rng: random.Random) -> Image.Image:
    """A light page with a title bar and lines of 'text' (dark bars) of random lengths."""
    image = smooth_field(size, rng, low=170, high=255)
    draw = ImageDraw.Draw(image)
    ink = tuple(rng.randint(0, 90) for _ in range(3))
    top = rng.randint(4, size // 6)
    draw.rectangle([rng.randint(4, 20), top, rng.randint(size // 2, size - 8), top + rng.randint(6, 12)], fill=ink)
    y = top + rng.randint(16, 26)
    while y < size - 8:
        left = rng.randint(6, 24)
        draw.rectangle([left, y, rng.randint(left + 10, size - 6), y + rng.randint(2, 4)], fill=ink)
        y += rng.randint(7, 14)
    return image


def lecturer(size: int, rng: random.Random) -> Image.Image:
    """A smooth background with a face-like ellipse and a body, slightly blurred."""
    image = smooth_field(size, rng, low=60, high=240)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):  # furniture, a window, a screen
        x, y = rng.randint(0, size - 8), rng.randint(0, size - 8)
        box = [x, y, rng.randint(x + 6, size), rng.randint(y + 6, size)]
        draw.rectangle(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
    cx, cy, r = (
        rng.randint(size // 3, 2 * size // 3),
        rng.randint(size // 4, size // 2),
        rng.randint(size // 9, size // 5),
    )
    skin = (rng.randint(170, 240), rng.randint(120, 190), rng.randint(90, 160))
    draw.rectangle([cx - 2 * r, cy + r, cx + 2 * r, size], fill=tuple(rng.randint(0, 120) for _ in range(3)))
    draw.ellipse([cx - r, cy - int(1.3 * r), cx + r, cy + int(1.3 * r)], fill=skin)
    # Lit unevenly: no region is flat (flat regions hash alike and would join videos).
    lighting = smooth_field(size, rng, low=0, high=255)
    return Image.blend(image, lighting, 0.4).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))


def tile_pools(data: Path) -> dict[str, list[Path]]:
    """Class name -> its tiles (sorted), for every class folder holding images."""
    pools = {
        d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
        for d in sorted(data.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    return {name: tiles for name, tiles in pools.items() if tiles}


def plan_videos(pools: dict[str, list[Path]], tissue: int, rng: random.Random) -> list[tuple[str, list[Path]]]:
    """(class, its tissue tiles) per video: tiles shuffled within a class, used once each."""
    videos = []
    for name, tiles in pools.items():
        tiles = list(tiles)
        rng.shuffle(tiles)
        videos += [(name, tiles[i : i + tissue]) for i in range(0, len(tiles) - tissue + 1, tissue)]
    rng.shuffle(videos)
    return videos


def write_video(out: Path, index: int, label: str, tiles: list[Path], args, rng: random.Random) -> list[list]:
    """Write one video's frames in a random order; its metadata rows."""
    kinds = ["tissue"] * len(tiles) + [
        rng.choice(["text", "lecturer"]) for _ in range(args.frames_per_video - len(tiles))
    ]
    rng.shuffle(kinds)
    sources = iter(tiles)
    rows = []
    for position, kind in enumerate(kinds):
        if kind == "tissue":
            with Image.open(next(sources)) as tile:
                frame = tile.convert("RGB").resize((args.size, args.size), Image.Resampling.LANCZOS)
        else:
            frame = (text_slide if kind == "text" else lecturer)(args.size, rng)
        rel = f"frames/v{index:03d}_{position:02d}.jpg"
        frame.save(out / rel, quality=92)
        rows.append([rel, label, f"v{index:03d}", kind])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="output folder (outside the repository), e.g. /tmp/lc_videos")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"LC25000 lung subset (default {DEFAULT_DATA})")
    ap.add_argument("--seed", type=int, default=27)
    ap.add_argument("--tissue-per-video", type=int, default=2)
    ap.add_argument("--frames-per-video", type=int, default=10)
    ap.add_argument("--size", type=int, default=128, help="side of every frame in px")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"SKIP: LC25000 lung subset not found at {args.data} (pass --data DIR); nothing written.")
        return 0
    out = args.out_dir.resolve()
    if out == ROOT or ROOT in out.parents:
        ap.error(f"out_dir {out} lies inside the repository {ROOT}; the project ships no third-party images")
    if not 1 <= args.tissue_per_video <= args.frames_per_video:
        ap.error("need 1 <= --tissue-per-video <= --frames-per-video")
    rng = random.Random(args.seed)
    videos = plan_videos(tile_pools(args.data), args.tissue_per_video, rng)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    rows = [row for i, (label, tiles) in enumerate(videos) for row in write_video(out, i, label, tiles, args, rng)]
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "kind"])
        writer.writerows(rows)
    kinds = {kind: sum(row[3] == kind for row in rows) for kind in ("tissue", "text", "lecturer")}
    summary = {"source": str(args.data), "seed": args.seed, "videos": len(videos), "frames": len(rows), "kinds": kinds}
    summary.update(tissue_per_video=args.tissue_per_video, frames_per_video=args.frames_per_video, size=args.size)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
