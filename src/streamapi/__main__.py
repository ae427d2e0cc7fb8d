from streamapi.cli import main

raise SystemExit(main())
