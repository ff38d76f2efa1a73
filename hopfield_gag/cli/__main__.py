"""``python -m hopfield_gag.cli``: the same as the ``hopfield-gag`` console script."""
import sys

from . import main

sys.exit(main())
