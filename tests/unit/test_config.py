"""gate.yaml: defaults, file, environment overrides, and errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from exportgate.config import load_config
from exportgate.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_means_embedded_defaults(tmp_path):
    cfg = load_config(None, env={"XDG_STATE_HOME": str(tmp_path)})
    assert cfg.file is None
    assert cfg.geo.database is None and cfg.catalog is None and cfg.policies == ()
    assert cfg.records == f"sqlite://{tmp_path}/exportgate/records.db"


def test_relative_paths_are_relative_to_the_file(tmp_path):
    path = write(tmp_path, "geo: {database: geo/x.mmdb}\ncatalog: catalog.yaml\npolicies: [packs]\n"
                           "records: sqlite:var/records.db\nrecord_log: log/decisions.jsonl\n")
    cfg = load_config(path, env={})
    assert cfg.geo.database == str(tmp_path / "geo/x.mmdb")
    assert cfg.catalog == str(tmp_path / "catalog.yaml")
    assert cfg.policies == (str(tmp_path / "packs"),)
    assert cfg.records == f"sqlite://{tmp_path}/var/records.db"
    assert cfg.record_log == str(tmp_path / "log/decisions.jsonl")


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "geo: {max_age_days: 10}\npolicy_settings: {cuba_software: block}\n")
    cfg = load_config(path, env={"EXPORTGATE_GEO__MAX_AGE_DAYS": "20",
                                 "EXPORTGATE_POLICY_SETTINGS__CUBA_SOFTWARE": "flag",
                                 "EXPORTGATE_RECORDS": "sqlite:///tmp/x.db",
                                 "EXPORTGATE_CONFIG": str(path)})
    assert cfg.geo.max_age_days == 20
    assert cfg.policy_settings == {"cuba_software": "flag"}
    assert cfg.records == "sqlite:///tmp/x.db"


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "instance: mirror-1\n")
    assert load_config(None, env={"EXPORTGATE_CONFIG": str(path)}).instance == "mirror-1"


def test_overrides_shorthand_mapping(tmp_path):
    cfg = load_config(write(tmp_path, "geo:\n  overrides: {10.0.0.0/8: US}\n"), env={})
    assert cfg.geo.overrides == {"10.0.0.0/8": "US"}


BAD = [
    pytest.param("recrods: sqlite:x.db\n", 1, "unknown key 'recrods'", id="typo top-level key"),
    pytest.param("geo:\n  databse: x.mmdb\n", 2, "unknown key 'databse'", id="typo nested key"),
    pytest.param("geo:\n  max_age_days: soon\n", 2, "whole number", id="wrong type"),
    pytest.param("geo:\n  max_age_days: 0\n", 2, "at least 1", id="out of range"),
    pytest.param("geo: [a]\n", 1, "must be a mapping", id="geo not a mapping"),
    pytest.param("policies: [1]\n", 1, r"policies\[0\]", id="policy path not text"),
    pytest.param("- a\n- b\n", 1, "must be a mapping", id="list instead of mapping"),
    pytest.param("geo: {database: a\n", 2, "YAML syntax error", id="syntax error"),
    pytest.param("instance: a\ninstance: b\n", 2, "duplicate key", id="duplicate key"),
    pytest.param("case_insensitive_paths: maybe\n", 1, "true or false", id="bool wrong"),
    # gunicorn reads an empty entry as 0.0.0.0:8000: every interface, a port nobody meant.
    pytest.param("serve:\n  bind: \"127.0.0.1:8451,\"\n", 2, "empty address", id="bind with a trailing comma"),
    pytest.param("serve:\n  bind: \"\"\n", 2, "empty address", id="bind empty"),
    pytest.param("serve:\n  bind: 127.0.0.1:70000\n", 2, "from 0 to 65535", id="bind port out of range"),
    pytest.param("serve:\n  bind: \"::1:8451\"\n", 2, "in brackets", id="bind IPv6 without brackets"),
    pytest.param("serve:\n  bind: \"unix:\"\n", 2, "no socket path", id="bind unix without path"),
    # ...and a host without a port as that host's port 8000.
    pytest.param("serve:\n  bind: localhost\n", 2, r"no port \(e\.g\. localhost:8451\)", id="bind without a port"),
    pytest.param("serve:\n  bind: \"[::1]\"\n", 2, "no port", id="bind IPv6 without a port"),
    # The Link: <...>; rel="blocked-by" target of every 451: it must not break out of the angle brackets.
    pytest.param("policy_url: \"javascript:alert(1)\"\n", 1, "policy_url must be", id="policy url scheme"),
    pytest.param("policy_url: \"https://x.example/>; rel=x, <https://evil.example/\"\n", 1, "policy_url must be",
                 id="policy url breaking out of the link"),
    pytest.param("policy_url: \"https://x.example/a\\r\\nX: y\"\n", 1, "policy_url must be",
                 id="policy url with a line break"),
    pytest.param("instance: t\noperator: \"a\x07b\"\n", 2, "U\\+0007 is not allowed", id="control character"),
    pytest.param("instance: t\npolicy_settings:\n  cuba_software: no\n", 3, "quote it", id="setting read as false"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_bad_config(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, env={})
    assert info.value.file == str(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_an_error_in_a_value_from_the_environment_names_the_variable_not_a_line(tmp_path):
    path = write(tmp_path, "instance: t\nserve:\n  workers: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"EXPORTGATE_SERVE__WORKERS": "0"})
    assert info.value.line is None and "set by the environment variable EXPORTGATE_SERVE__WORKERS" in str(info.value)


def test_unknown_environment_setting_is_an_error():
    with pytest.raises(ConfigError, match="EXPORTGATE_RECORD:"):
        load_config(None, env={"EXPORTGATE_RECORD": "sqlite:///x"})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize("text", ["", "# instance: mirror-1\n# serve: {trust_proxy: [10.0.0.1/32]}\n", "---\n"])
def test_a_config_file_with_no_settings_is_an_error_not_the_embedded_defaults(tmp_path, text):
    """A gate.yaml emptied by a failed deploy (or every line commented out) read as the embedded defaults: no
    trust_proxy (every client located at the front end: an unknown location, flagged and served), no manifest, the
    shipped packs, another store; and a reload under deploy/gunicorn.conf.py put that in force."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="no settings") as info:
        load_config(path, env={})
    assert info.value.file == str(path)


@pytest.mark.parametrize(("text", "env", "message"), [
    pytest.param("instance: t\npolicies: []\n", {}, "policies is empty", id="policies []"),
    pytest.param("instance: t\npolicies:\n", {}, "policies is empty", id="policies with nothing"),
    pytest.param("instance: t\npolicies: ~\n", {}, "policies is empty", id="policies null"),
    pytest.param("instance: t\n", {"EXPORTGATE_POLICIES": ""}, "EXPORTGATE_POLICIES", id="policies from env"),
    pytest.param("instance: t\ncatalog:\n", {}, "catalog is empty", id="catalog with nothing"),
    pytest.param("instance: t\ncatalog: \"\"\n", {}, "catalog is empty", id="catalog empty text"),
    pytest.param("instance: t\n", {"EXPORTGATE_CATALOG": ""}, "EXPORTGATE_CATALOG", id="catalog from env"),
])
def test_policies_or_catalog_set_to_nothing_is_an_error_not_the_default(tmp_path, text, env, message):
    """Left out, they mean the shipped packs and no manifest; set to nothing (a list emptied by a template, an
    empty environment variable), they silently meant the same: an operator's own packs, and the jurisdictions only
    they restrict, gone."""
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env=env)


@pytest.mark.parametrize("kind", ["pack", "manifest", "config", "authorizations"])
@pytest.mark.parametrize("special", ["dev-zero", "fifo", "too-large"])
def test_a_file_that_is_no_regular_file_or_too_large_is_refused_with_its_name(tmp_path, monkeypatch, kind,
                                                                               special):
    """A link to /dev/zero in a pack directory was read until the process was killed for its memory; a FIFO hung
    check and a reload."""
    import os

    from click.testing import CliRunner

    from conftest import write_config
    from exportgate import yamlfile
    from exportgate.cli import main

    target = tmp_path / f"{kind}.yaml"
    if special == "dev-zero":
        target.symlink_to("/dev/zero")
        expected = "not a regular file"
    elif special == "fifo":
        os.mkfifo(target)
        expected = "not a regular file"
    else:
        monkeypatch.setattr(yamlfile, "MAX_FILE_BYTES", 1024)
        target.write_text("# padding\n" * 200, encoding="utf-8")
        expected = "larger than"
    settings = {"pack": {"policies": [str(target)]}, "manifest": {"catalog": str(target)}}.get(kind, {})
    config = target if kind == "config" else write_config(tmp_path, **settings)
    args = ["--config", str(config), "check"]
    if kind == "authorizations":
        args = ["--config", str(config), "authorize", "import", str(target)]
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code != 0, result.output
    assert str(target) in result.output and expected in result.output, result.output


def test_a_key_written_beside_a_merge_key_overrides_the_merged_one_and_written_twice_is_a_duplicate():
    """YAML's merge key: `<<: *base` then `path: /b/**` is a rule that takes everything from base but its path.
    It was refused as a duplicate key (at the anchor's line)."""
    from exportgate import yamlfile

    text = ("base: &base {class: personal-communications, eccn: EAR99, path: /a/**}\n"
            "rules:\n  - <<: *base\n    path: /b/**\n")
    data = yamlfile.loads(text, "m.yaml")
    assert dict(data["rules"][0]) == {"class": "personal-communications", "eccn": "EAR99", "path": "/b/**"}
    with pytest.raises(ConfigError, match="duplicate key 'path'") as info:
        yamlfile.loads(text + "    path: /c/**\n", "m.yaml")
    assert info.value.line == 5


def test_geo_max_age_days_null_is_no_limit_and_left_out_is_35(tmp_path):
    """geodata/README says `null` disables the staleness limit; it was read as the default 35."""
    assert load_config(write(tmp_path, "instance: t\ngeo:\n  max_age_days: null\n"), env={}).geo.max_age_days is None
    assert load_config(write(tmp_path, "instance: t\ngeo: {}\n"), env={}).geo.max_age_days == 35
    assert load_config(write(tmp_path, "instance: t\ngeo:\n  max_age_days: 7\n"), env={}).geo.max_age_days == 7
