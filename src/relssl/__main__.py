"""``python -m relssl``: the ``relssl`` command (also what ``torchrun -m relssl`` runs)."""

import sys

from relssl.cli import main

if __name__ == "__main__":
    sys.exit(main())
