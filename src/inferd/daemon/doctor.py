"""The local checks of `inferd doctor`: the config and the model files it names.

Each check is (ok, label, detail). The admin half (is the daemon up, what can it do)
lives in the CLI, which uses only the public client.
"""

from __future__ import annotations

import json
import signal
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
    checks: list[Check] = [(True, "config", detail), budget_check(cfg)]
    for entry in cfg.backends:
        if isinstance(entry, LlamaCppEntry):
            checks.extend(_model_checks(entry, cfg))
            checks.append(selftest_check(entry, cfg))
    return checks


def budget_check(cfg: ConfigFile) -> Check:
    """The memory budget (ADR 0034) and what each llama.cpp model is estimated to take:
    one that alone exceeds the budget can never load."""
    from ..models.gguf import GGUFError, read_gguf
    from .models.budget import estimate, human, parse_budget, total_ram

    budget = parse_budget(cfg.memory_budget)
    parts, too_big = [], []
    for entry in cfg.backends:
        if not isinstance(entry, LlamaCppEntry):
            continue
        path = _model_file(entry, cfg)
        try:
            need = estimate(read_gguf(path), entry.options()).total if path is not None else None
        except (OSError, GGUFError):
            need = None
        parts.append(f"{entry.name} ~{human(need)}" if need else f"{entry.name} (not sized: file missing)")
        if need and need > budget:
            too_big.append(entry.name)
    source = "memory_budget" if cfg.memory_budget is not None else "default: RAM less a quarter"
    detail = f"{human(budget)} of {human(total_ram())} RAM ({source}); " + ("; ".join(parts) or "no llama.cpp models")
    if too_big:
        detail += f"; larger than the whole budget: {', '.join(too_big)}"
    return not too_big, "memory budget", detail


#: A one-token decode of a small model takes a second or two; a large one loads longer.
SELFTEST_TIMEOUT = 300.0


def selftest_check(entry: LlamaCppEntry, cfg: ConfigFile, timeout: float = SELFTEST_TIMEOUT) -> Check:
    """A one-token decode with the entry's settings in a throwaway process (ADR 0019):
    an engine that would fault says so here, naming the signal, not in the daemon later."""
    label = f"selftest[{entry.name}]"
    path = _model_file(entry, cfg)
    if path is None or not path.is_file():
        return False, label, "not run: the model file is missing"
    from ..engine.llamacpp.settings import LlamaCppSettings
    from ..engine.llamacpp.spawn import run_engine_module

    settings = LlamaCppSettings.from_options(entry.options(), model_path=str(path), parallel=1, embed=False)
    done = run_engine_module("inferd.engine.llamacpp.selftest", settings.model_dump_json(), timeout)
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return False, label, (f"the engine died with {name} during a one-token decode (amx={entry.amx}, "
                              f"flash_attn={entry.flash_attn}); the daemon would crash on its first request. "
                              "See README: CPUs with AMX")
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return False, label, f"exit {done.returncode} without a result: {done.stderr.strip()[-300:]}"
    if not result.get("ok"):
        return False, label, f"failed: {result.get('error')}"
    features = " ".join(result["cpu_features"]) or "none"
    return True, label, (f"one-token decode ok in {result['seconds']:g}s (token {result['piece']!r}); "
                         f"amx={result['amx']} repack={str(result['repack']).lower()} cpu_features={features}; "
                         f"{result['amx_reason']}")


def _model_file(entry: LlamaCppEntry, cfg: ConfigFile) -> Path | None:
    if entry.model_path is not None:
        return Path(entry.model_path).expanduser()
    if entry.model is None:
        return None
    return ModelStore(default_store_root(cfg.models_home)).blob_path(entry.model.sha256)


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
