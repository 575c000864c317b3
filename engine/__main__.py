"""``python -m engine`` runs the ``orchestrion`` command."""

import sys

from engine.cli import main

sys.exit(main())
