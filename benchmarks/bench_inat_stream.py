"""Streaming speed and memory of the iNat 2021 reader on a generated ``train.json``.

    python benchmarks/bench_inat_stream.py [--images 200000]

Writes a file in the released layout (images with the 2021 fields, categories with the
taxonomy, one annotation per image) to a temporary folder, reads it with
:func:`inatloc_nb.datasets.inat_builder.read_inat21` and prints MB/s and the peak resident memory.
The real file (2.7M images, about 1 GB) scales linearly.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from inatloc_nb.datasets.inat_builder import read_inat21


def write_train_json(path: Path, n_images: int, n_species: int = 1000) -> None:
    """A train.json of ``n_images`` images spread over ``n_species`` categories."""
    with path.open("w") as f:
        f.write('{"info": {"year": 2021}, "images": [')
        for i in range(n_images):
            d = f"{i % n_species:05d}_Animalia_Chordata_Aves_Order_Family_Genus{i % n_species}_epithet"
            f.write(("," if i else "") + json.dumps({
                "id": i, "width": 500, "height": 375, "file_name": f"train/{d}/{i:032x}.jpg", "license": 1,
                "rights_holder": "someone", "date": "2019-01-01 10:00:00", "latitude": 1.0, "longitude": 2.0,
                "location_uncertainty": 10}))
        f.write('], "categories": [')
        f.write(",".join(json.dumps({
            "id": c, "name": f"Genus{c} epithet", "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves",
            "order": "Order", "family": "Family", "genus": f"Genus{c}", "specific_epithet": "epithet"})
            for c in range(n_species)))
        f.write('], "annotations": [')
        f.write(",".join(json.dumps({"id": i, "image_id": i, "category_id": i % n_species}) for i in range(n_images)))
        f.write("]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.json"
        write_train_json(path, args.images)
        size = path.stat().st_size / 2**20
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        _, images = read_inat21(path, progress=False)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.images} images, {size:.0f} MiB: {seconds:.1f} s ({size / seconds:.1f} MiB/s), "
          f"{images.height} rows; peak RSS {peak:.0f} MiB ({peak - before:+.0f} MiB while reading)")


if __name__ == "__main__":
    main()
