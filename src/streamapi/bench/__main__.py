"""``python -m streamapi.bench``: the same as ``streamapi bench``."""

import sys

from streamapi.bench.cli import main

sys.exit(main())
