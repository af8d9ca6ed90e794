"""``python -m sb_mal.cli``: the same as the ``sb-mal`` command."""

import sys

from sb_mal.cli import main

sys.exit(main())
