"""``python -m metasr`` is the ``metasr`` command."""

import sys

from .cli import main

sys.exit(main())
