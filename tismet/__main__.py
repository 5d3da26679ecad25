"""``python -m tismet``: the tismet command line (see tismet.cli)."""
import sys

from tismet.cli import main

sys.exit(main())
