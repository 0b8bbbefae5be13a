from pcivm.cli import main

raise SystemExit(main())
