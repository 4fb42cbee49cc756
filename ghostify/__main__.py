"""``python -m ghostify`` (also what ``torchrun -m ghostify`` runs)."""

import sys

from ghostify.cli import main

if __name__ == "__main__":
    sys.exit(main())
