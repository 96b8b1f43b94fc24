"""Collection rules for the whole checkout (the doctests of rskd_loss and baselines, and tests/).

A framework integration's module imports its framework at the top; where that framework is not
installed (a venv with the library alone), its doctests are not collected instead of failing the run.
"""
from __future__ import annotations

import importlib.util

_NEEDS = {
    "rskd_loss/integrations/lightning.py": "lightning",
    "rskd_loss/integrations/mmpretrain.py": "mmpretrain",
    "tests/integrations/_lightning_helpers.py": "lightning",
    "tests/integrations/_lightning_ddp_worker.py": "lightning",
}

collect_ignore = [path for path, module in _NEEDS.items() if importlib.util.find_spec(module) is None]
