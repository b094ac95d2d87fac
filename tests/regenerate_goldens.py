"""Rewrite tests/golden/sample_ct.json from the current code (``make goldens``).

Goldens are statistics (triangles, volume, area, bounds), never file bytes.
Regenerate only on purpose, and review the diff: a changed number is a
changed result that the commit message must explain.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from pipeline.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "sample_ct.json"
KEYS = ("triangles", "shells", "volume_mm3", "area_mm2", "bounds_lps_mm")


def sample_statistics(out_dir: Path) -> dict:
    code = cli_main(["mesh", str(REPO / "sample_ct"), "--config", str(REPO / "configs" / "default.toml"),
                     "--out", str(out_dir), "--quiet"])
    if code != 0:
        raise SystemExit(f"mesh failed with status {code}")
    return statistics(json.loads((out_dir / "report.json").read_text()))


def statistics(report: dict) -> dict:
    return {
        "meshes": {name: {k: stats[k] for k in KEYS} for name, stats in report["meshes"].items()},
        "planes": {p["name"]: round(p["implant_contact_area_mm2"], 1) for p in report["planes"]},
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        stats = sample_statistics(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(stats, indent=2) + "\n")
    print(f"wrote {GOLDEN.relative_to(REPO)}; review with: git diff {GOLDEN.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
