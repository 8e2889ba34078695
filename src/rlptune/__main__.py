"""``python -m rlptune …`` (and ``torchrun … -m rlptune train …``): the command line."""

import sys

from .cli import main

sys.exit(main())
