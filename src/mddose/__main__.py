"""``python -m mddose ...``: the same as the ``mddose`` command."""

import sys

from mddose.cli.main import main

sys.exit(main())
