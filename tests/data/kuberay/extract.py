"""Regenerate the vendored KubeRay v1 schemas from the CRD files.

    python tests/data/kuberay/extract.py /path/to/kuberay/ray-operator/config/crd/bases

Writes, beside this script, <kind>.v1.schema.json.gz: the `spec.versions[name=v1].schema.openAPIV3Schema`
of each CRD as compact JSON with sorted keys, gzipped with mtime 0 (the same input gives the same bytes).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

# vendored file stem -> CRD file in ray-operator/config/crd/bases/
CRDS = {
    "raycluster": "ray.io_rayclusters.yaml",
    "rayjob": "ray.io_rayjobs.yaml",
    "raycronjob": "ray.io_raycronjobs.yaml",
}
HERE = Path(__file__).resolve().parent


def v1_schema(crd_file: Path) -> dict:
    """The openAPIV3Schema of the CRD's v1 version."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(crd_file.read_text(), Loader=loader)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]
    raise SystemExit(f"{crd_file}: no v1 version")


def encode(schema: dict) -> bytes:
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[1])
    for stem, name in CRDS.items():
        out = HERE / f"{stem}.v1.schema.json.gz"
        out.write_bytes(encode(v1_schema(src / name)))
        print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
