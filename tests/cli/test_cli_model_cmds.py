"""`inferd ps`, `ls`, `rm` and doctor's memory budget line (issue 20)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from daemon_harness import roundtrip, req
from inferd.cli import model_cmds
from inferd.daemon.config import parse_config
from inferd.daemon.doctor import budget_check

MiB = 1 << 20


def app() -> typer.Typer:
    a = typer.Typer()

    @a.callback()
    def _root() -> None:
        """Subcommands."""

    model_cmds.register(a)
    return a


def config_file(tmp_path, **cfg) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


async def test_ps_shows_what_is_loaded_its_memory_slots_and_expiry(daemon_factory, sockdir):
    cfg = config_file(sockdir, keep_alive="1h", backends=[
        {"kind": "mock", "name": "chat"},
        {"kind": "mock", "name": "coder", "on_demand": True, "memory_bytes": 300 * MiB}])
    d = await daemon_factory(config=cfg)
    assert (await roundtrip(d.infer, req("a", model="coder")))[-1]["backend"] == "coder"
    result = await asyncio.to_thread(CliRunner().invoke, app(), ["ps", "--admin-addr", d.admin])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "MEMORY", "SLOTS", "EXPIRES"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["chat"][2:] == ["-", "0/1", "never"]
    assert rows["coder"][2:5] == ["300", "MiB", "0/1"] and rows["coder"][5:] in (["in", "60m"], ["in", "59m"])
    from inferd.cli.admin_cmds import register as register_admin

    status_app = app()
    register_admin(status_app)
    status = await asyncio.to_thread(CliRunner().invoke, status_app, ["status", "--admin-addr", d.admin])
    assert status.exit_code == 0
    assert "note: model coder is idle: unloaded in 3" in status.stderr  # 3599s or 3600s


def test_ls_lists_every_model_and_rm_removes_one(tmp_path):
    cfg = config_file(tmp_path, default_model="coder", backends=[
        {"kind": "mock", "name": "chat"},
        {"kind": "llamacpp", "name": "coder", "on_demand": True, "aliases": ["qwen2.5-coder:1.5b"],
         "model_path": "/models/coder.gguf"}])
    listed = CliRunner().invoke(app(), ["ls", "--config", cfg])
    assert listed.exit_code == 0, listed.output
    rows = listed.stdout.splitlines()
    assert rows[1].split() == ["chat", "mock", "at", "boot"]
    assert rows[2].split() == ["coder", "llamacpp", "on", "demand", "qwen2.5-coder:1.5b", "/models/coder.gguf"]
    gone = CliRunner().invoke(app(), ["rm", "qwen2.5-coder:1.5b", "--config", cfg])
    assert gone.exit_code == 0, gone.output
    data = json.loads(open(cfg).read())
    assert [b["name"] for b in data["backends"]] == ["chat"] and "default_model" not in data
    parse_config(data)  # still a config a daemon boots from
    last = CliRunner().invoke(app(), ["rm", "chat", "--config", cfg])
    assert last.exit_code == 1 and "the only model" in last.output
    missing = CliRunner().invoke(app(), ["rm", "nope", "--config", cfg])
    assert missing.exit_code == 1 and "no model named 'nope'" in missing.output


def test_doctor_shows_the_budget_and_fails_a_model_larger_than_it(tiny_gguf):
    entry = {"kind": "llamacpp", "name": "tiny", "model_path": tiny_gguf, "n_ctx": 512, "parallel": 1}
    ok, label, detail = budget_check(parse_config({"backends": [entry], "memory_budget": "8GiB"}))
    assert ok and label == "memory budget" and detail.startswith("8.00 GiB of ") and "tiny ~6" in detail
    ok, _, detail = budget_check(parse_config({"backends": [entry], "memory_budget": "100MiB"}))
    assert not ok and detail.endswith("larger than the whole budget: tiny")


# ---- pull hf.co/OWNER/REPO:QUANT -------------------------------------------------------

async def test_pull_from_the_hub_adds_a_working_entry(daemon_factory, sockdir, tmp_path, tiny_gguf, monkeypatch):
    import shutil

    from fake_hub import COMMIT, serving_hub
    from inferd.cli import models as models_cli

    q8 = tmp_path / "tiny-q8.gguf"
    shutil.copy(tiny_gguf, q8)
    with q8.open("ab") as f:
        f.write(b"\0" * 32)  # another file: another sha256
    pull_app = typer.Typer()

    @pull_app.callback()
    def _root() -> None:
        """Subcommands."""

    models_cli.register(pull_app)
    cfg = tmp_path / "conf" / "config.json"
    monkeypatch.setenv("MODELS_HOME", str(tmp_path / "store"))
    with serving_hub() as hub:
        hub.add(Path(tiny_gguf), repo="acme/Tiny-GGUF", filename="tiny-Q4_K_M.gguf", revision=COMMIT)
        hub.add(q8, repo="acme/Tiny-GGUF", filename="tiny-Q8_0.gguf", revision=COMMIT)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = CliRunner().invoke(pull_app, ["pull", "hf.co/acme/Tiny-GGUF:Q4_K_M", "--config", str(cfg)])
        assert result.exit_code == 0, result.output
        assert 'as \'tiny:q4_k_m\'' in result.stdout and 'model="tiny:q4_k_m"' in result.stdout
        wrong = CliRunner().invoke(pull_app, ["pull", "hf.co/acme/Tiny-GGUF:Q2_K", "--config", str(cfg)])
        assert wrong.exit_code == 1 and "no GGUF file for Q2_K; it has: Q4_K_M, Q8_0" in wrong.output
    data = json.loads(cfg.read_text())
    # No config before: the first one keeps the embedded default (still the default) beside it.
    assert [b["name"] for b in data["backends"]] == ["gemma-3-270m", "tiny:q4_k_m"]
    pulled = data["backends"][-1]
    assert pulled["on_demand"] is True
    assert pulled["name"] == "tiny:q4_k_m" and pulled["aliases"] == ["hf.co/acme/Tiny-GGUF:Q4_K_M"]
    assert pulled["model"]["filename"] == "tiny-Q4_K_M.gguf" and pulled["model"]["revision"] == COMMIT
    assert pulled["model"]["sha256"] == hub.sha_of(Path(tiny_gguf))
    # The daemon boots from the written config and serves the pulled model by either name.
    pulled.update({"n_ctx": 512, "parallel": 1})
    data["backends"] = [{"kind": "mock", "name": "chat"}, pulled]
    cfg.write_text(json.dumps(data))
    d = await daemon_factory(config=str(cfg))
    done = await roundtrip(d.infer, req("p", model="hf.co/acme/Tiny-GGUF:Q4_K_M", max_tokens=2), timeout=60)
    assert (done[-1]["type"], done[-1]["backend"]) == ("done", "tiny:q4_k_m")
