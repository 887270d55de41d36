import hashlib
import json
import re

from conftest import CONFORMANCE, UPSTREAM, run_cli


def test_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("inspect", "tissues"):
        assert command in result.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and re.match(r"omniseg-rt \d+\.\d+\.\d+", version.stdout)


def test_inspect_json_for_both_families():
    readme = (CONFORMANCE / "README.md").read_text()
    for family, path in UPSTREAM.items():
        result = run_cli("inspect", str(path), "--json")
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["family"] == family
        assert info["parameters"] == {"midl": 6_033_238, "scale": 6_986_122}[family]
        assert info["parameters"] - info["parameters_used"] == 76_416
        assert [t["abbrev"] for t in info["tissues"]] == ["DT", "PT", "CAP", "TUFT", "VES", "PTC"]
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{info['sha256']}  {path.name}" in readme


def test_inspect_human_output():
    result = run_cli("inspect", str(UPSTREAM["scale"]))
    assert result.returncode == 0
    assert "6,986,122" in result.stdout and "scale-aware" in result.stdout


def test_tissues_json():
    result = run_cli("tissues", "--json")
    assert result.returncode == 0
    rows = json.loads(result.stdout)["tissues"]
    assert [(r["abbrev"], r["scale_group"]) for r in rows][:3] == [("DT", "10x"), ("PT", "10x"), ("CAP", "5x")]


def test_usage_errors_exit_2():
    assert run_cli("inspect").returncode == 2
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("tissues", "--bogus").returncode == 2


def test_inspect_directory_is_a_domain_error(tmp_path):
    result = run_cli("inspect", str(tmp_path))
    assert result.returncode == 1
    assert str(tmp_path) in result.stderr and "directory" in result.stderr
