"""Content hashes of a run folder, to tell whether two runs wrote the same results (part file names and row order
differ from run to run): each table's rows sorted by ImageNumber (and ObjectNumber) and hashed as CSV, the label
images by name and bytes, every file of ``analysis/`` by its bytes.

    python -m nucleiscreen.bench.identity RUN [OTHER_RUN]    # prints the hashes; with two runs, what differs

This is how a change that must keep the outputs checks it (docs/architecture.md, "Outputs kept").
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import polars as pl


def table_hash(run: Path, name: str) -> dict | None:
    parts = sorted((run / name).rglob("part-*.parquet"))
    if not parts:
        return None
    df = pl.concat([pl.read_parquet(p, hive_partitioning=False) for p in parts], how="diagonal_relaxed")
    df = df.sort([c for c in ("ImageNumber", "ObjectNumber") if c in df.columns] or df.columns[:1])
    return {"rows": df.height, "columns": df.columns, "sha256": hashlib.sha256(df.write_csv().encode()).hexdigest()}


def run_hashes(run: str | Path) -> dict:
    run = Path(run)
    out: dict = {t: table_hash(run, t) for t in ("images", "objects", "errors")}
    labels = sorted((run / "labels").rglob("*.tif"))
    if labels:
        digest = hashlib.sha256()
        for p in labels:
            digest.update(p.name.encode() + p.read_bytes())
        out["labels"] = digest.hexdigest()
    for p in sorted((run / "analysis").glob("*")) if (run / "analysis").is_dir() else []:
        out[f"analysis/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m nucleiscreen.bench.identity RUN [OTHER_RUN]", file=sys.stderr)
        return 2
    hashes = [run_hashes(a) for a in args]
    if len(hashes) == 1:
        print(json.dumps(hashes[0], indent=1))
        return 0
    differ = sorted(k for k in set(hashes[0]) | set(hashes[1]) if hashes[0].get(k) != hashes[1].get(k))
    print("identical" if not differ else "different: " + ", ".join(differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
