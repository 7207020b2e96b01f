from __future__ import annotations

from optisync.cli import main

main()
