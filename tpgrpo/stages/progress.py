"""Progress bars for long stage loops (stderr; off when not a terminal unless forced).

`TPGRPO_PROGRESS=1` forces bars on (e.g. in a CI log), `TPGRPO_PROGRESS=0` turns them off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar over `total` items."""
    flag = os.environ.get("TPGRPO_PROGRESS")
    disable = (not sys.stderr.isatty()) if flag is None else flag == "0"
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, leave=False)
