"""``python -m distgn`` runs the command-line interface."""

import sys

from distgn.cli import main

sys.exit(main())
