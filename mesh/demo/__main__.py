"""``python -m mesh.demo SERVICE ...``: run one service of the demo mesh."""

from __future__ import annotations

import sys

from mesh.demo.services.serve import main

if __name__ == "__main__":
    sys.exit(main())
