from pcapd.cli import main

raise SystemExit(main())
