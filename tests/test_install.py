"""What ``pip install .`` gives a user (the Dockerfile runs exactly that): the
sdist and the wheel hold every module, the installed ``archway`` runs from its
own venv without the source tree, and routes a request through a real Envoy.

A wheel that listed only the top package once died on ``import
ext_proc.translate``; the editable install the other tests use cannot see that.
"""

from __future__ import annotations

import email.parser
import json
import re
import subprocess
from pathlib import Path

import openai

from tests.installed import (
    ROOT,
    Installation,
    Process,
    clean_env,
    sdist_names,
    tracked_files,
    wheel_names,
)

DEMO_CONFIG = ROOT / "examples" / "demo.yaml"


def _installed(
    installation: Installation, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installation.archway), *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _package_files() -> set[str]:
    return {name for name in tracked_files() if name.startswith("ext_proc/")}


def _metadata(wheel: Path) -> email.message.Message:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_sdist_and_the_wheel_hold_every_module_and_data_file(
    installed_archway: Installation,
) -> None:
    package = _package_files()
    assert {"ext_proc/py.typed", "ext_proc/translate/__init__.py"} <= package
    assert package - sdist_names(installed_archway.sdist) == set()
    shipped = {n for n in wheel_names(installed_archway.wheel) if n.startswith("ext_proc/")}
    assert shipped == package


def test_the_wheel_pins_what_it_imports_internals_of(installed_archway: Installation) -> None:
    requires = _metadata(installed_archway.wheel).get_all("Requires-Dist") or []
    (hpack,) = [r for r in requires if re.match(r"hpack\b", r)]
    # ext_proc/transport/h2grpc.py imports hpack.table and hpack.huffman_table.
    assert "<5" in hpack


def test_every_module_imports_from_the_installed_wheel(
    installed_archway: Installation, tmp_path: Path
) -> None:
    modules = sorted(
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in _package_files()
        if name.endswith(".py")
    )
    # The packages of the optional extras ([router], [tracing], ...), as Python names.
    requires = _metadata(installed_archway.wheel).get_all("Requires-Dist") or []
    optional = {
        re.split(r"[\s<>=~!;\[]", r, maxsplit=1)[0].lower().replace("-", "_")
        for r in requires
        if "extra ==" in r
    }
    script = (
        "import importlib, json, sys\n"
        "result = {'file': importlib.import_module('ext_proc').__file__, 'missing': {}}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        result['missing'][name] = exc.name\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run(
        [str(installed_archway.python), "-c", script, *modules],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out)
    # The wheel's copy, not the source tree's.
    assert Path(result["file"]).is_relative_to(installed_archway.venv)
    # A module may miss only a package of an optional extra ([router]'s numpy,
    # [postgres]' psycopg); the command line and the server never do.
    for module, missing in result["missing"].items():
        assert missing.split(".")[0].lower() in optional, (module, missing)
    assert not {"ext_proc.cli", "ext_proc.server.service"} & result["missing"].keys()


def test_the_installed_command_line_helps_and_checks(
    installed_archway: Installation, tmp_path: Path
) -> None:
    helped = _installed(installed_archway, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for command in ("check", "render", "serve", "up"):
        assert command in helped.stdout
    checked = _installed(installed_archway, "check", str(DEMO_CONFIG), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "openai/gpt-5.2" in checked.stdout
    assert "demo-openai-key" not in checked.stdout + checked.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_archway_up_from_the_wheel_routes_through_envoy(
    installed_archway: Installation, tmp_path: Path
) -> None:
    # The demo, on ports no other test holds: the listener and Envoy's admin
    # on free ones, the echo providers on two picked now.
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = text.replace("port: 12000", "port: 0")
    text = text.replace(":18081", f":{_free_port()}").replace(":18082", f":{_free_port()}")
    config = tmp_path / "demo.yaml"
    config.write_text(text + "\narchway:\n  admin_port: 0\n", encoding="utf-8")
    up = Process(
        [
            installed_archway.archway,
            "up",
            config,
            "--echo-upstream",
            "--workers",
            "1",
            "--metrics-port",
            "off",
        ],
        cwd=tmp_path,
        env=clean_env(),
        log=tmp_path / "up.log",
    )
    try:
        line = up.wait_for(lambda s: "clients use base_url" in s)
        base_url = line.rsplit(" ", 1)[1]
        up.wait_for(lambda s: s.startswith("Ctrl-C stops everything"))
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=20)
        raw = client.chat.completions.with_raw_response.create(
            model="fast-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-archway-model"] == "openai/gpt-5.2"
        reply = raw.parse().choices[0].message.content or ""
        # The echo provider says what it received: the alias's model and the demo's key.
        assert "POST /v1/chat/completions, model=gpt-5.2" in reply
        assert "Bearer" in reply
    finally:
        code = up.stop()
    assert code == 0, up.stderr()
    assert "Traceback" not in up.stderr()
