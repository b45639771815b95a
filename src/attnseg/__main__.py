"""``python -m attnseg`` (used by ``torchrun -m attnseg train ...``)."""

import sys

from attnseg.cli.main import main

sys.exit(main())
