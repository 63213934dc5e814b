from raysim.cli import main

raise SystemExit(main())
