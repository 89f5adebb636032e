import json

import pytest

from oncofl.errors import SiteConfigError
from oncofl.site_config import ENV_VAR, LOCAL_FILE_NAME, find_site_config, load_site_config, parse_site_config


def write(tmp_path, fields, name="site-1.json"):
    path = tmp_path / name
    path.write_text(json.dumps(fields))
    return path


def test_valid_config_resolves_relative_paths_and_defaults(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datalist.json").write_text("{}")
    config = load_site_config(write(tmp_path, {"data_root": "data", "gpu_ids": [0, 1]}), site_name="site-1")
    assert config.data_root == (tmp_path / "data").resolve()
    assert config.datalist == (tmp_path / "data" / "datalist.json").resolve()
    assert config.cache_dir == (tmp_path / "oncofl_cache").resolve()
    assert config.gpu_ids == (0, 1) and config.num_workers == 2 and config.on_unreadable_case == "fail"
    assert config.site_name == "site-1"


def test_missing_data_root_names_site_field_and_fix_but_sends_no_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SiteConfigError) as info:
        load_site_config(write(tmp_path, {"data_root": str(missing)}), site_name="site-2")
    err = info.value
    assert "[site-2]" in err.local_message() and "'data_root' folder does not exist" in err.local_message()
    assert str(missing) in err.local_message() and "Fix:" in err.local_message()
    assert str(missing) not in err.server_message() and str(tmp_path) not in err.server_message()
    assert "'data_root' folder does not exist" in err.server_message()


def test_every_bad_field_is_reported_at_once(tmp_path):
    raw = {"data_rot": "x", "gpu_ids": "0", "num_workers": -1, "on_unreadable_case": "ignore", "site_name": "site-9"}
    with pytest.raises(SiteConfigError) as info:
        parse_site_config(raw, site_name="site-1")
    text = info.value.server_message()
    for expected in (
        "unknown field (did you mean 'data_root'?)",
        "missing required field 'data_root'",
        "'gpu_ids' must be a list",
        "'num_workers' must be an integer",
        "'on_unreadable_case' must be one of",
        "'site_name' differs from the name this client runs as, 'site-1'",
    ):
        assert expected in text
    # the values read from the file stay in the local message
    assert "data_rot" not in text and "ignore" not in text and "site-9" not in text
    local = info.value.local_message()
    assert "'data_rot'" in local and "'ignore'" in local and "'site-9'" in local


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "site-1.json"
    path.write_text('{"data_root": "x",}')
    with pytest.raises(SiteConfigError, match="not valid JSON \\(line 1"):
        load_site_config(path)


def test_missing_datalist_is_reported(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(SiteConfigError, match="datalist file does not exist"):
        load_site_config(write(tmp_path, {"data_root": "data"}))


def test_find_site_config_env_file_env_dir_and_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    workspace = tmp_path / "ws"
    (workspace / "local").mkdir(parents=True)
    local = workspace / "local" / LOCAL_FILE_NAME
    local.write_text("{}")
    assert find_site_config("site-1", workspace) == local

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "site-1.json").write_text("{}")
    monkeypatch.setenv(ENV_VAR, str(folder))
    assert find_site_config("site-1", workspace) == folder / "site-1.json"
    monkeypatch.setenv(ENV_VAR, str(folder / "site-1.json"))
    assert find_site_config("site-7", None) == folder / "site-1.json"


def test_no_config_anywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nothing"))
    with pytest.raises(SiteConfigError) as info:
        find_site_config("site-3", tmp_path / "ws")
    assert "looked at" in info.value.local_message() and LOCAL_FILE_NAME in info.value.local_message()
    assert str(tmp_path) not in info.value.server_message()
    assert "[site-3] no site configuration found" in info.value.server_message()
