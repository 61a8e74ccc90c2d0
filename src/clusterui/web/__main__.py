import sys

from clusterui.web.cli import main

sys.exit(main())
