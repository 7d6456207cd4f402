"""Dry-run scale: build the DAG of a 1M-row, ~1,000-shard Quilt configuration and time `snakemake -n`.

    .venv/bin/python benchmarks/bench_dryrun.py            # 1,000,000 rows, 650,000 images
    .venv/bin/python benchmarks/bench_dryrun.py --quick    # 100,000 rows

Generates the Quilt-format lookup and an image folder of empty files (bench_ingest's fixture), runs
the real workflow up to the `plan_shards` checkpoint, then times dry runs of the whole workflow
(median of --repeats). The shard count comes from the shard plan (Parquet footers of the split
manifests), so the dry run plans one shard_tfrecords job per shard. Target: <= 15 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_ingest import make_quilt_fixture  # noqa: E402
from workflow_runner import copy_workflow, workflow_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=650_000)
    parser.add_argument("--shards", type=int, default=1000, help="target total shard count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.images, args.shards = 100_000, 65_000, 200

    snakemake = str(Path(sys.executable).parent / "snakemake")
    with tempfile.TemporaryDirectory(prefix="bench_dryrun_") as tmp:
        tmp = Path(tmp)
        lookup, image_root = make_quilt_fixture(tmp / "data", args.rows, args.images)
        workdir = copy_workflow(tmp / "run")
        overlay = {
            "dataset": {
                "format": "quilt",
                "metadata": str(lookup),
                "image_root": str(image_root),
                "demo": {"enabled": False},
            },
            "filters": {"min_per_class": 1},
            # images kept are ~90% of the distinct ones: aim at about --shards shards in total
            "tfrecords": {"images_per_shard": max(1, int(args.images * 0.9 / args.shards))},
        }
        (workdir / "scale.yaml").write_text(json.dumps(overlay))
        base = [snakemake, "--cores", "2", "--configfile", "scale.yaml"]
        env = workflow_env()
        t0 = time.perf_counter()
        subprocess.run([*base, "--until", "plan_shards"], cwd=workdir, env=env, check=True,
                       capture_output=True)  # fmt: skip
        prepare_s = time.perf_counter() - t0

        times, jobs = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run([*base, "--dry-run", "--quiet", "rules"], cwd=workdir, env=env,
                                  check=True, capture_output=True, text=True)  # fmt: skip
            times.append(time.perf_counter() - t0)
            for line in proc.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "total":
                    jobs = int(parts[1])
    result = {
        "rows": args.rows,
        "images": args.images,
        "planned_jobs": jobs,
        "filter_and_split_seconds": round(prepare_s, 2),
        "dry_run_seconds_median": round(statistics.median(times), 2),
        "dry_run_seconds_all": [round(t, 2) for t in times],
        "target_seconds": 15,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
