from pool.cli import main

raise SystemExit(main())
