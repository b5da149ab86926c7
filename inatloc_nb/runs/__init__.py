"""One run end to end (train, extract, score, write its folder), fused learning-rate runs, the
baselines, post-hoc explainers, a finished run read back, and the results store."""
