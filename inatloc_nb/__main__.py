"""``python -m inatloc_nb`` runs the command line."""
import sys

from inatloc_nb.cli import main

sys.exit(main())
