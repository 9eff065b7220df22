"""`python -m vlmforge` is the same as the `vlmforge` command."""

from vlmforge.cli import main

raise SystemExit(main())
