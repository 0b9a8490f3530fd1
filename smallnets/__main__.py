from smallnets.cli import main

raise SystemExit(main())
