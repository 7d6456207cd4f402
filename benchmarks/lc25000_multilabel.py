"""Arrange the LC25000 lung development subset as a multi-label dataset of 2x2 mosaics.

    .venv/bin/python benchmarks/lc25000_multilabel.py OUT_DIR [--data DIR] [--seed 16]
                     [--mosaic-size 256] [--per-group 2] [--quality 95]

Evidence for issue 16 (``filters.label_policy: multilabel``): on real H&E tiles, does a model learn
labels that are really visible in the image? Each new image is a 2x2 mosaic of four LC25000 tiles
(each downsized to mosaic_size / 2 px, placed at shuffled positions), and its label list is the set
of classes of its four tiles, so every label is visible in its image (unlike Quilt, whose lists come
from narration). The number of distinct classes per mosaic (1, 2 or 3) is drawn uniformly, so
single-, two- and three-label images all occur; compositions are 4 / 2+2 or 3+1 / 2+1+1 tiles.

Honesty rules:
- every source tile is used at most once (no tile shared between mosaics);
- "videos" (column ``group``) are runs of ``--per-group`` mosaics built from disjoint tiles; the
  workflow splits by group, so a group never straddles train / val / test. The default of 2 mosaics
  per group gives 75 groups and about 12 test groups; with 4 per group (38 groups) the test split held
  only 5 groups, and a paired swap test over 5 units cannot reach p < 0.0625, so no comparison could
  ever be significant.
- NOT removed: LC25000's own leakage. Its ~5,000 images per class were made by rotating and flipping
  about 250 originals per class (see the data set's README), so rotated / flipped near-copies of one
  original tile can land in different mosaics, groups and splits. The workflow's near-duplicate
  grouping hashes whole mosaics and cannot catch a shared quarter. Scores on this set check that the
  multi-label pipeline learns visible labels; they are optimistic and do not rank models.

Writes, all below OUT_DIR (which must lie outside the repository; the source images are never copied
into it): ``mosaics/mNNNN.jpg``, ``metadata.csv`` (columns path, labels, group; labels is a list
literal like "['lung_aca', 'lung_n']", path relative to OUT_DIR), ``sources.csv`` (the four source
tiles and positions of every mosaic) and ``summary.json`` (counts, seed, label-count histogram).

When the LC25000 folder is absent the script prints why and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lc25000-lung-dev"
EXTENSIONS = (".jpg", ".jpeg", ".png")


def compositions(k: int, rng: random.Random) -> list[int]:
    """Tile counts per distinct class for a mosaic with k distinct classes (sum 4)."""
    if k == 1:
        return [4]
    if k == 2:
        return rng.choice([[2, 2], [3, 1]])
    if k == 3:
        return [2, 1, 1]
    raise ValueError(k)


def plan_mosaics(pools: dict[str, list[Path]], rng: random.Random) -> list[list[tuple[str, Path]]]:
    """Draw mosaics until the tiles run out; each mosaic = 4 (class, tile) pairs, tiles never reused."""
    classes = sorted(pools)
    remaining = {c: list(pools[c]) for c in classes}
    for c in classes:
        rng.shuffle(remaining[c])
    mosaics: list[list[tuple[str, Path]]] = []
    while True:
        k = rng.choice([1, 2, 3])
        counts = sorted(compositions(k, rng), reverse=True)
        # Classes weighted by their remaining tiles (keeps the three pools draining evenly); the
        # largest share goes to a random one of the chosen classes, not always the fullest pool.
        chosen: list[str] = []
        avail = [c for c in classes if remaining[c]]
        for _ in range(k):
            cand = [c for c in avail if c not in chosen]
            if not cand:
                break
            weights = [len(remaining[c]) for c in cand]
            chosen.append(rng.choices(cand, weights=weights)[0])
        if len(chosen) < k:
            # Too few classes left for this k: try the other k once before stopping.
            if sum(len(v) for v in remaining.values()) < 4:
                break
            continue
        rng.shuffle(chosen)
        need = dict(zip(chosen, counts))
        if any(len(remaining[c]) < n for c, n in need.items()):
            # Cannot satisfy this composition; stop when no 4-tile mosaic of any kind fits.
            if all(len(remaining[c]) < 4 for c in classes) and sum(1 for c in classes if remaining[c]) < 2:
                break
            if sum(len(v) for v in remaining.values()) < 4:
                break
            # Fall back to a draw restricted to what is left.
            feasible = _feasible(remaining)
            if not feasible:
                break
            need = rng.choice(feasible)
        tiles = [(c, remaining[c].pop()) for c, n in need.items() for _ in range(n)]
        rng.shuffle(tiles)  # random positions in the 2x2 grid
        mosaics.append(tiles)
    return mosaics


def _feasible(remaining: dict[str, list[Path]]) -> list[dict[str, int]]:
    """Every composition (as {class: count}) that the remaining tiles still allow."""
    classes = sorted(remaining)
    out: list[dict[str, int]] = []
    for c in classes:
        if len(remaining[c]) >= 4:
            out.append({c: 4})
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            for na, nb in ((2, 2), (3, 1), (1, 3)):
                if len(remaining[a]) >= na and len(remaining[b]) >= nb:
                    out.append({a: na, b: nb})
    if len(classes) >= 3:
        for big in classes:
            rest = [c for c in classes if c != big]
            if len(remaining[big]) >= 2 and all(len(remaining[c]) >= 1 for c in rest):
                out.append({big: 2, **{c: 1 for c in rest}})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="output folder (outside the repository), e.g. /tmp/lc_ml")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"LC25000 lung subset (default {DEFAULT_DATA})")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--mosaic-size", type=int, default=256, help="side of a mosaic in px (even)")
    ap.add_argument("--per-group", type=int, default=2, help="mosaics per group ('video')")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality of the mosaics")
    args = ap.parse_args()

    if not args.data.is_dir():
        print(f"SKIP: LC25000 lung subset not found at {args.data} (pass --data DIR); nothing written.")
        return 0
    out = args.out_dir.resolve()
    if out == ROOT or ROOT in out.parents:
        ap.error(f"out_dir {out} lies inside the repository {ROOT}; the project ships no third-party images")
    if args.mosaic_size % 2 or args.mosaic_size < 32:
        ap.error("--mosaic-size must be even and >= 32")

    pools = {
        d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
        for d in sorted(args.data.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    pools = {c: v for c, v in pools.items() if v}
    if len(pools) < 2:
        print(f"SKIP: {args.data} has fewer than two class folders with images; nothing written.")
        return 0

    rng = random.Random(args.seed)
    mosaics = plan_mosaics(pools, rng)
    used = [t for m in mosaics for _, t in m]
    assert len(used) == len(set(used)), "a tile was used twice"

    (out / "mosaics").mkdir(parents=True, exist_ok=True)
    half = args.mosaic_size // 2
    width = len(str(len(mosaics)))
    meta_rows, source_rows = [], []
    k_hist: Counter[int] = Counter()
    label_count: Counter[str] = Counter()
    for i, tiles in enumerate(mosaics):
        canvas = Image.new("RGB", (args.mosaic_size, args.mosaic_size))
        for pos, (cls, path) in enumerate(tiles):
            with Image.open(path) as im:
                tile = im.convert("RGB").resize((half, half), Image.Resampling.LANCZOS)
            canvas.paste(tile, ((pos % 2) * half, (pos // 2) * half))
            source_rows.append([f"m{i:0{width}d}", pos, cls, path.relative_to(args.data).as_posix()])
        rel = f"mosaics/m{i:0{width}d}.jpg"
        canvas.save(out / rel, quality=args.quality)
        # Labels ordered by tile count (most tiles first, ties by name): the workflow stratifies
        # its splits on the first label, so the stratum is the mosaic's dominant class.
        counts = Counter(c for c, _ in tiles)
        labels = sorted(counts, key=lambda c: (-counts[c], c))
        k_hist[len(labels)] += 1
        label_count.update(labels)
        meta_rows.append([rel, repr(labels), f"g{i // args.per_group:03d}"])

    with open(out / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "group"])
        w.writerows(meta_rows)
    with open(out / "sources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mosaic", "position", "class", "source_tile"])
        w.writerows(source_rows)
    summary = {
        "source": str(args.data),
        "seed": args.seed,
        "mosaic_size": args.mosaic_size,
        "mosaics": len(mosaics),
        "groups": len({r[2] for r in meta_rows}),
        "mosaics_per_group": args.per_group,
        "tiles_used": len(used),
        "tiles_available": {c: len(v) for c, v in pools.items()},
        "distinct_labels_per_mosaic": {str(k): k_hist[k] for k in sorted(k_hist)},
        "mosaics_per_label": dict(sorted(label_count.items())),
        "caveat": "LC25000 tiles are rotated/flipped copies of ~250 originals per class: near-copies "
        "of one original can sit in different mosaics, groups and splits (optimistic scores).",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out / 'metadata.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
