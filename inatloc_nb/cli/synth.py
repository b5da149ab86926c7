"""``inatloc-nb synth``: generate the synthetic iNaturalist-like dataset."""
from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic hierarchical dataset (images + Choe-format metadata)",
        description="Generate the synthetic iNaturalist-like world: habitat backgrounds follow "
        "the phylum, silhouettes the class and order, colour and texture the family and genus, "
        "and a small mark the species. Same seed, same bytes.",
    )
    parser.add_argument("--preset", choices=("tiny", "demo", "wide", "longtail"), default="tiny", help="world (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (empty or a previous synth output)")
    parser.add_argument("--image-size", type=int, help="image side in pixels")
    parser.add_argument("--per-class", type=_ints, metavar="TRAIN[,VAL,TEST]",
                        help="images per species: train, or train,val,test")
    parser.add_argument("--branching", type=_ints, metavar="P,C,O,F,G,S",
                        help="children per node for phylum, class, order, family, genus, species")
    parser.add_argument("--species-imbalance", type=float, help="largest / smallest train count per species")
    parser.add_argument("--habitat-correlation", type=float,
                        help="probability that the background is the phylum's habitat")
    parser.add_argument("--clutter", type=_ints, metavar="MIN,MAX", help="range of distractors per image")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print where it is."""
    from inatloc_nb.datasets.synth import SynthConfig, generate

    overrides: dict[str, object] = {
        name: getattr(args, name)
        for name in ("image_size", "branching", "species_imbalance", "habitat_correlation", "clutter")
        if getattr(args, name) is not None
    }
    if args.per_class is not None:
        per_class = args.per_class
        if len(per_class) == 1:
            per_class = (per_class[0], *SynthConfig.preset(args.preset).per_class[1:])
        overrides["per_class"] = per_class
    out = generate(args.preset, args.seed, out=args.out, progress=not args.quiet, **overrides)
    print(f"synthetic {args.preset} dataset (seed {args.seed}) written to {out}")
    return 0
