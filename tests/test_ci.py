"""``make test`` provisions Chromium for the browser tests where it can, and a run that skipped
them ends by saying so."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
PROVISION = REPO / ".ci" / "provision-chromium"
BASH = shutil.which("bash")


def _provision(tmp_path: Path, uid: int = 0, apt: str | None = "ok", chromium: bool = False,
               **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the provisioning script with a PATH of stubs only (``id``, ``apt-get``, ``chromium``);
    its result and the apt-get calls it made."""
    stubs, log = tmp_path / "bin", tmp_path / "apt.log"
    stubs.mkdir(exist_ok=True)
    scripts = {"id": f'echo {uid}'}
    if apt is not None:
        scripts["apt-get"] = f'echo "$*" >> {log}; ' + ("exit 0" if apt == "ok" else '[ "$1" = update ]')
    if chromium:
        scripts["chromium"] = "exit 0"
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!{BASH}\n{body}\n")
        (stubs / name).chmod(0o755)
    done = subprocess.run([BASH, str(PROVISION)], env={"PATH": str(stubs), **env}, capture_output=True, text=True)
    return done, log.read_text().splitlines() if log.is_file() else []


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_provisioning_installs_chromium_as_root_with_apt(tmp_path: Path) -> None:
    done, calls = _provision(tmp_path)
    assert done.returncode == 0 and "chromium installed" in done.stdout
    assert calls == ["update -qq", "install -y -qq chromium"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
@pytest.mark.parametrize(("case", "message"), [
    ({"chromium": True}, ""),
    ({"uid": 1000}, "chromium not found; installing it needs root: the browser tests will skip"),
    ({"apt": None}, "chromium not found and apt-get is unavailable: the browser tests will skip"),
    ({"INATLOC_NB_PROVISION_CHROMIUM": "no"}, "not installing it (INATLOC_NB_PROVISION_CHROMIUM=no)"),
])
def test_provisioning_leaves_the_system_alone_when_it_cannot(tmp_path: Path, case: dict, message: str) -> None:
    done, calls = _provision(tmp_path, **case)
    assert (done.returncode, calls) == (0, [])
    assert message in done.stdout if message else done.stdout == ""


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_failed_installation_warns_and_lets_the_tests_run(tmp_path: Path) -> None:
    done, calls = _provision(tmp_path, apt="fail")
    assert done.returncode == 0 and "warning: could not install chromium: the browser tests will skip" in done.stdout
    assert calls == ["update -qq", "install -y -qq chromium"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_provisions_before_running_pytest() -> None:
    plan = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    provision = plan.index(".ci/provision-chromium")
    assert any("-m pytest" in line for line in plan[provision + 1:])


def test_skipped_browser_tests_end_the_run_with_one_line(pytester: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INATLOC_NB_CACHE", os.environ.get("INATLOC_NB_CACHE", ""))  # the conftest sets it
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    browser: needs Chromium\n")
    pytester.makepyfile(test_lab="""
        import pytest

        @pytest.mark.browser
        @pytest.mark.skipif(True, reason="no Chromium executable (chromium) found on this machine")
        def test_explorer():
            pass

        @pytest.mark.browser
        @pytest.mark.skipif(True, reason="no Chromium executable (chromium) found on this machine")
        def test_results():
            pass

        @pytest.mark.skip(reason="unrelated")
        def test_other():
            pass

        def test_plain():
            pass
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3)
    line = ("BROWSER TESTS NOT RUN: 2 skipped (no Chromium executable (chromium) found on this machine); "
            "`make test` installs Debian's chromium when run as root with apt-get, or install Chromium and rerun")
    assert [out for out in result.outlines if out.startswith("BROWSER")] == [line]
    assert [out for out in result.outlines if out.strip()][-1] == line  # after pytest's own summary


def test_no_closing_line_when_browser_tests_ran_or_were_deselected(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INATLOC_NB_CACHE", os.environ.get("INATLOC_NB_CACHE", ""))
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    browser: needs Chromium\n")
    pytester.makepyfile(test_lab="""
        import pytest

        @pytest.mark.browser
        def test_explorer():
            pass

        @pytest.mark.browser
        @pytest.mark.skipif(True, reason="no Chromium")
        def test_results():
            pass
    """)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "explorer")
    result.assert_outcomes(passed=1)
    assert not [out for out in result.outlines if "BROWSER TESTS" in out]
