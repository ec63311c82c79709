"""``python -m avfused`` (also what ``torchrun -m avfused`` runs)."""

import sys

from avfused.cli import main

sys.exit(main())
