"""``inatloc-nb make-dataset``: Choe-format datasets from the released files of other datasets."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``make-dataset`` command and its four sources."""
    parser = subparsers.add_parser(
        "make-dataset",
        help="build a Choe-format dataset with label levels from iNaturalist, FGVC-Aircraft, CUB or ImageNet files",
        description="Write a Choe-format metadata folder (train/ val/ test/, class_names*.txt) with a "
        "class_labels_<level>.txt per level of the label hierarchy.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="SOURCE")
    inat = kinds.add_parser("inat", help="iNatLoc-style: iNat 2021 train images (D_w), iNat 2017 boxes (D_f, D_test)")
    inat.add_argument("--inat21", required=True, type=Path, help="iNat 2021 train.json")
    inat.add_argument("--boxes17", required=True, type=Path, action="append",
                      help="iNat 2017 train_2017_bboxes.json / val_2017_bboxes.json (repeat the option)")
    taxa = inat.add_mutually_exclusive_group()
    taxa.add_argument("--species-list", type=Path, help="file with one scientific name per line")
    taxa.add_argument("--inatloc500", action="store_true", help="the 500 iNatLoc500 species (rebuilds iNatLoc500)")
    inat.add_argument("--supercategory", action="append", help="keep species of this 2017 supercategory (repeatable)")
    inat.add_argument("--n-species", type=int, help="draw this many eligible species at random (seeded)")
    inat.add_argument("--per-species-train", type=int, help="D_w images per species (default: all)")
    inat.add_argument("--per-species-val", type=int, default=25, help="D_f images per species (default 25)")
    inat.add_argument("--per-species-test", type=int, default=25, help="D_test images per species (default 25)")
    inat.add_argument("--seed", type=int, default=0)
    inat.add_argument("--inat21-images", type=Path, help="iNat 2021 image root, linked as OUT/images/inat21")
    inat.add_argument("--inat17-images", type=Path, help="iNat 2017 image root, linked as OUT/images/inat17")
    air = kinds.add_parser("aircraft", help="FGVC-Aircraft 2013b: variant < family < manufacturer")
    air.add_argument("release", type=Path, help="the fgvc-aircraft-2013b folder")
    for name, what in (("cub", "CUB-200-2011 with the paper's 184-species hierarchy"),
                       ("imagenet", "ImageNet with the WordNet hierarchy (927 classes, levels cK)")):
        sub = kinds.add_parser(name, help=what)
        sub.add_argument("metadata", type=Path, help="Choe et al.'s WSOL metadata folder (train/ val/ test/; "
                         f"clovaai/wsolevaluation metadata/{'CUB' if name == 'cub' else 'ILSVRC'})")
        sub.add_argument("--train-per-class", type=int, default=200 if name == "imagenet" else None,
                         help="keep this many train images per class (ImageNet default 200, App. A)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--images", type=Path, help="the image folder, linked as OUT/images")
    for sub in kinds.choices.values():
        sub.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the chosen dataset and print what was written."""
    from inatloc_nb.core.errors import InatlocError

    progress = not args.quiet
    if args.kind == "inat":
        from inatloc_nb.datasets import inat_builder

        species = None
        if args.inatloc500:
            species = inat_builder.inatloc500_species()
        elif args.species_list is not None:
            if not args.species_list.is_file():
                raise InatlocError(f"{args.species_list}: species list not found")
            species = [line.strip() for line in args.species_list.read_text().splitlines() if line.strip()]
        roots = {k: v for k, v in (("inat21", args.inat21_images), ("inat17", args.inat17_images)) if v}
        summary = inat_builder.build_inat(
            args.inat21, args.boxes17, args.out, supercategories=args.supercategory, species=species,
            n_species=args.n_species, seed=args.seed, image_roots=roots or None, progress=progress,
            per_species={"train": args.per_species_train, "val": args.per_species_val, "test": args.per_species_test})
        print("\n".join(summary.lines()))
        print(f"image root: {args.out / 'images'} (folders inat21/ and inat17/)")
        return 0
    if args.kind == "aircraft":
        from inatloc_nb.datasets.aircraft import build_aircraft

        out = build_aircraft(args.release, args.out, progress=progress)
        print(f"wrote {out} (images: {out / 'images'}, linked to the release's data/images)")
        return 0
    from inatloc_nb.datasets.build import (
        export_dataset,
        link_images,
        require_wsol_metadata,
        with_shipped_hierarchy,
    )
    from inatloc_nb.datasets.dataset import WSOLDataset

    name = "cub" if args.kind == "cub" else "ilsvrc"
    require_wsol_metadata(args.metadata, name)
    if args.images is not None and not args.images.is_dir():  # before anything is written
        raise InatlocError(f"{args.images}: image folder not found")
    dataset = with_shipped_hierarchy(WSOLDataset.from_folder(args.metadata), name)
    out = export_dataset(dataset, args.out, args.train_per_class, args.seed)
    if args.images is not None:
        link_images(out, args.images)
    counts = ", ".join(f"{s} {m.images.height}" for s, m in dataset.splits.items())
    print(f"wrote {out}: {len(dataset.hierarchy.leaves)} classes, levels {', '.join(dataset.levels)}; "
          f"images before sampling: {counts}; {dataset.excluded.height} images of excluded classes left out")
    return 0
