"""``python -m tokentrace`` runs the command line."""

from __future__ import annotations

import sys

from tokentrace.cli import main

sys.exit(main())
