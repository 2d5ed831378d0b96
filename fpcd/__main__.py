from fpcd.cli import main

raise SystemExit(main())
