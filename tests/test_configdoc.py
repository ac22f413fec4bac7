"""Configuration is documented once: docs/deployment.md's reference and .env.example are what
`./dev docs` generates from the settings models, and the README points there instead of
keeping a table of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from switchboard_dev import configdoc

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", [configdoc.DEPLOYMENT, configdoc.ENV_EXAMPLE], ids=lambda p: p.name)
def test_the_documents_are_what_the_settings_models_say(path):
    expected = configdoc.outputs()[path]
    actual = path.read_text()
    if actual != expected:
        changed = [line for line in expected.splitlines() if line not in actual.splitlines()][:8]
        pytest.fail(f"{path.relative_to(ROOT)} differs from the settings models: run ./dev docs. "
                    f"Lines the models give that it lacks: {changed}")


def test_every_setting_has_a_meaning_and_no_stand_in_outlives_its_description():
    missing, stale = [], []
    for _, _, model, rows in configdoc.model_fields():
        for name, var, info in rows:
            if not configdoc.meaning(model, name, info):
                missing.append(f"{model.__name__}.{name} ({var})")
    for key in configdoc.MISSING_DESCRIPTIONS:
        model_name, _, field = key.partition(".")
        model = next(m for _, _, m, _ in configdoc.model_fields() if m.__name__ == model_name)
        if field not in model.model_fields:
            stale.append(f"{key}: no such field")
        elif model.model_fields[field].description:
            stale.append(f"{key}: the model describes it now")
    assert missing == [], f"give these a Field(description=...): {missing}"
    assert stale == [], f"remove from configdoc.MISSING_DESCRIPTIONS: {stale}"


def test_the_readme_links_to_the_reference_instead_of_repeating_it():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    section = section[: section.index("\n## ", 1)]
    assert "docs/deployment.md#environment-variables" in section
    assert "## Environment variables" in configdoc.DEPLOYMENT.read_text()
    variables = {var for _, _, _, rows in configdoc.model_fields() for _, var, _ in rows}
    table_rows = [var for var in re.findall(r"^\| `([A-Z0-9_]+)`", readme, re.M) if var in variables]
    assert table_rows == [], f"README keeps its own table of settings again: {table_rows}"


def test_env_example_lists_each_variable_once_with_its_compose_default():
    names = re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", configdoc.ENV_EXAMPLE.read_text(), re.M)
    counts = {name: sum(1 for n, _ in names if n == name) for name, _ in names}
    assert [name for name, n in counts.items() if n > 1] == []
    shown = dict(names)
    assert shown["EDGE_REQUIRE_STREAM_TOKEN"] == "true" and shown["CONTROL_PUBLIC_DOCS"] == "false"  # compose's own


def test_check_mode_reports_drift(tmp_path, monkeypatch, capsys):
    drifted = tmp_path / "deployment.md"
    drifted.write_text(configdoc.DEPLOYMENT.read_text().replace("| `KEY_PREFIX` | `sb:` |", "| `KEY_PREFIX` | `x:` |"))
    env = tmp_path / ".env.example"
    env.write_text(configdoc.ENV_EXAMPLE.read_text())
    monkeypatch.setattr(configdoc, "DEPLOYMENT", drifted)
    monkeypatch.setattr(configdoc, "ENV_EXAMPLE", env)
    monkeypatch.setattr(configdoc, "ROOT", tmp_path)
    assert configdoc.main(["--check"]) == 1
    assert "deployment.md differs from the settings models" in capsys.readouterr().err
    assert configdoc.main(["--write"]) == 0 and configdoc.main(["--check"]) == 0
    assert "| `KEY_PREFIX` | `sb:` |" in drifted.read_text()
