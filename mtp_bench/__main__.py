from mtp_bench.cli import main

raise SystemExit(main())
