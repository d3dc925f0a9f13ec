"""The local checks of `inferd doctor`: the config and the model files it names.

Each check is (ok, label, detail). The admin half (is the daemon up, what can it do)
lives in the CLI, which uses only the public client.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, ConfigFile, LlamaCppEntry, config_source, resolve_config_path
from ..models.store import ModelStore, default_store_root, digests_equal, sha256_file

Check = tuple[bool, str, str]


def local_checks(config_path: str | None) -> list[Check]:
    try:
        cfg, source = config_source(config_path)
    except ConfigError as exc:
        return [(False, "config", str(exc))]
    names = ", ".join(f"{e.kind}:{e.name}" for e in cfg.backends)
    if source == "embedded default":
        detail = f"no config file at {resolve_config_path(None)}; embedded default (backends: [{names}])"
    else:
        detail = f"loaded {source} (backends: [{names}], auto_pull={cfg.auto_pull})"
    checks: list[Check] = [(True, "config", detail)]
    for entry in cfg.backends:
        if isinstance(entry, LlamaCppEntry):
            checks.extend(_model_checks(entry, cfg))
    return checks


def _model_checks(entry: LlamaCppEntry, cfg: ConfigFile) -> list[Check]:
    label = f"model[{entry.name}]"
    if entry.model_path is not None:
        path = Path(entry.model_path).expanduser()
        if not path.is_file():
            return [(False, label, f"file missing at {path}")]
        digest = sha256_file(path)
        size = path.stat().st_size
        if entry.model_sha256 and not digests_equal(entry.model_sha256.lower(), digest):
            return [(False, label, f"{path} has sha256 {digest}, config expects {entry.model_sha256.lower()}")]
        pinned = "verified" if entry.model_sha256 else "unpinned"
        return [(True, label, f"{path} ({size} bytes) sha256={digest} ({pinned})")]
    assert entry.model is not None
    store = ModelStore(default_store_root(cfg.models_home))
    blob = store.blob_path(entry.model.sha256)
    manifest = store.manifest_path(entry.model.name)
    checks: list[Check] = []
    if blob.is_file():
        checks.append((True, label, f"blob present ({blob.stat().st_size} bytes) at {blob} sha256={entry.model.sha256}"))
    else:
        checks.append((False, label, f"blob missing at {blob}; run `inferd pull` or set auto_pull=true"))
    if manifest.is_file():
        checks.append((True, f"manifest[{entry.name}]", f"present at {manifest}"))
    else:
        checks.append((False, f"manifest[{entry.name}]", f"missing at {manifest}; the model has not been fetched yet"))
    return checks
