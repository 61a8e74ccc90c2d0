from clusterui.cli.entry import main

raise SystemExit(main())
