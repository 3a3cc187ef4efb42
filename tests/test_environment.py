"""The packaging: the library's core needs only torch, numpy and scipy (as ranges); the artifact's exact versions live
in constraints.txt, which `make` and environment.yml both use, and the environment the tests run in is that one."""
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

import immiscible

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;#]", requirement.strip(), maxsplit=1)[0].lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower()] = pinned
    return pins


def test_the_core_needs_only_torch_numpy_scipy_as_ranges():
    assert {_name(r) for r in PROJECT["dependencies"]} == {"torch", "numpy", "scipy"}
    assert not any("==" in r for r in PROJECT["dependencies"])


def test_every_dependency_is_pinned_in_constraints_and_installed_at_that_version():
    pins = constraints()
    names = {_name(r) for r in PROJECT["dependencies"]}
    for extra in ("artifact", "sd", "test", "lap", "lab"):
        names |= {_name(r) for r in PROJECT["optional-dependencies"][extra]}
    assert names <= set(pins), f"not pinned in constraints.txt: {sorted(names - set(pins))}"
    for name, pinned in pins.items():
        try:
            assert version(name) == pinned, f"{name} {version(name)} installed, constraints.txt pins {pinned}"
        except PackageNotFoundError:
            assert name == "jupyterlab", f"{name} is pinned but not installed (make installs .[artifact,test])"


def test_environment_yml_installs_the_same_pins_and_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-c constraints.txt", "-e .[artifact,sd,test]"]
    make = (ROOT / "Makefile").read_text()
    assert '-c constraints.txt -e ".[artifact,sd,test]"' in make


def test_version_is_the_packages():
    assert immiscible.__version__ == PROJECT["version"] == version("immiscible")


def test_the_readme_documents_exactly_the_public_api():
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- public-api -->", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"^\| `(\w+)\(", table, re.M)
    assert sorted(documented) == sorted(immiscible.__all__)
    for name in immiscible.__all__:
        assert callable(getattr(immiscible, name))
