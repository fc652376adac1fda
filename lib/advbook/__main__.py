"""``python -m advbook``: the same command line as ``advbook``."""
from advbook.book.cli import main

raise SystemExit(main())
