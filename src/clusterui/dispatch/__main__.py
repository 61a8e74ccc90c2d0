"""Entry point: ``python -m clusterui.dispatch [MODE]`` (see clusterui.dispatch)."""

import sys

from clusterui.dispatch.core import main

sys.exit(main())
