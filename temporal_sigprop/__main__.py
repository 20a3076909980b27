"""``python -m temporal_sigprop ...`` is ``tsp ...`` (and what ``torchrun ... -m`` launches)."""

import sys

from .cli import main

sys.exit(main())
