"""Allow `python -m monitord`."""

from monitord.commands.cli import main

raise SystemExit(main())
