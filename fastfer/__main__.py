"""``python -m fastfer ...`` runs the ``fastfer`` command line (also under ``torchrun -m fastfer train ...``)."""
import sys

from fastfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
