"""Choosing the label granularity from data instead of a grid search.

- :mod:`~inatloc_nb.granularity.evidence`: per-image box accuracy of finished runs on D_f;
- :mod:`~inatloc_nb.granularity.choose`: one level per category from that evidence, resolved
  into a valid labelling (``inatloc-nb choose-levels``);
- :mod:`~inatloc_nb.granularity.selection`: automatic level selection (short runs or the heads
  of one multi-head run) and its agreement with the full grid; the side-by-side comparison;
- :mod:`~inatloc_nb.granularity.intervals`: paired bootstrap intervals of D_test gains over the
  test images and the seeds;
- :mod:`~inatloc_nb.granularity.ensemble`: level ensembles, the fused CAM of the single-level
  runs of a range of levels (no training beyond the grid).

Mixed (per-category) labellings, the ``mixed:FILE`` level and its CSV file format are
:mod:`inatloc_nb.hierarchies.labelling` (every part of the library that takes a level reads them). The
multi-head training method itself is :mod:`inatloc_nb.training.methods.multihead`.
"""
