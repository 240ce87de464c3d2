"""archway check/explain/route/router convert with a preference router."""

from __future__ import annotations

import json
from pathlib import Path

from ext_proc.cli import main
from tests.conftest import TinyModel
from tests.test_router_e2e import CONFIG

ENDPOINTS = {"openai": "http://127.0.0.1:1", "anthropic": "http://127.0.0.1:2"}


def write_config(tmp_path: Path, model_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(**ENDPOINTS, model_path=model_path, timeout="20s"))
    return path


def test_check_and_explain_say_whether_the_router_is_asked(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, tmp_path)
    assert main(["check", str(config)]) == 0
    assert f"preference router: arch_router ({tmp_path}), timeout 20s" in capsys.readouterr().out
    assert main(["explain", str(config), "--model", "auto"]) == 0
    assert "router:      asked (arch_router)" in capsys.readouterr().out
    assert main(["explain", str(config), "--model", "openai/gpt-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["router_called"] is False
    assert out["router"] == "not asked: the request names its model"


def test_route_runs_the_router_offline(tiny_model: TinyModel, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, tiny_model.ct2_dir)
    assert main(["route", str(config), "Write a story about a dragon", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["route"] == "creative writing"
    assert out["model"] == "anthropic/claude-sonnet-4-5"
    assert out["resolution"] == "router"
    assert out["prompt_tokens"] > 100
    assert out["latency_s"] >= 0
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
    assert main(["route", str(config), "--body", str(body), "--path", "/v1/messages"]) == 0
    assert "route:        creative writing" in capsys.readouterr().out


def test_route_with_a_broken_model_dir_explains_the_fix(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, tmp_path)
    assert main(["route", str(config), "hello"]) == 1
    err = capsys.readouterr().err
    assert "the preference router cannot start" in err
    assert "model.bin" in err and "archway router convert" in err


def test_router_convert(tiny_model: TinyModel, tmp_path: Path, capsys) -> None:
    out = tmp_path / "converted"
    assert main(["router", "convert", str(tiny_model.hf_dir), str(out)]) == 0
    assert f"set router.model_path: {out.resolve()}" in capsys.readouterr().out
    for name in ("model.bin", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()
    assert main(["router", "convert", str(tmp_path / "nothing"), str(out)]) == 1
    assert "no config.json" in capsys.readouterr().err
