"""WSOL datasets: the Choe-format metadata, images, the synthetic world and the builders of the
real datasets."""
