"""``python -m em.datasets generate ...`` (see :mod:`em.datasets.cli`)."""
import sys

from .cli import main

sys.exit(main())
