"""``python -m pixeldino``: the same as the ``pixeldino`` command."""

import sys

from pixeldino.cli import main

sys.exit(main())
