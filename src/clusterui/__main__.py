from clusterui.cli.main import main

raise SystemExit(main())
