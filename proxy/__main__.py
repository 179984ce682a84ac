"""``python -m proxy`` is ``aspose-proxy``."""

import sys

from proxy.cli import main

sys.exit(main())
