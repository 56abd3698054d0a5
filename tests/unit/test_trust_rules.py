"""Which config values count as code to import (ignite_app.io.trust)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ignite_app.config import Config
from ignite_app.errors import UserError
from ignite_app.io.trust import require_trusted, untrusted_imports


@pytest.mark.parametrize("model, dataset, expected", [
    ("mlp", "digits", []),
    ("auto", "npz:/data/d.npz", []),
    ("cnn", "csv:data/pkg.mod:x.csv", []),
    ("pkg.mod:Net", "digits", [("--model", "pkg.mod:Net")]),
    ("mlp", "pkg.data:get", [("--dataset", "pkg.data:get")]),
])
def test_only_import_paths_need_consent(model, dataset, expected):
    assert untrusted_imports(Config(model=model, dataset=dataset), {}) == expected


def test_consent_by_flag_or_by_naming_the_same_path():
    cfg = Config(model="pkg.mod:Net", dataset="pkg.data:get")
    with pytest.raises(UserError, match=r"run/config.yaml names code to import \(--model pkg.mod:Net\); nothing was imported"):
        require_trusted(cfg, Path("run"), trusted=False)
    with pytest.raises(UserError, match=r"\(--dataset pkg.data:get\)"):
        require_trusted(cfg, Path("run"), trusted=False, given={"--model": "pkg.mod:Net", "--dataset": "other.mod:x"})
    require_trusted(cfg, Path("run"), trusted=False, given={"--model": "pkg.mod:Net", "--dataset": "pkg.data:get"})
    require_trusted(cfg, Path("run"), trusted=True)
