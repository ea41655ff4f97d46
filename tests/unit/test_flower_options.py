"""Flower's options from settings: auth is all or nothing, and never beyond localhost without it."""

import pytest

from erdu_tasks.errors import ConfigError
from erdu_tasks.devstack.flower import flower_argv, flower_env, flower_options, is_loopback


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("", False), ("10.0.0.5", False), ("::", False), ("flower.example.com", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_defaults_listen_on_localhost_without_auth():
    opts = flower_options({})
    assert (opts.address, opts.port, opts.has_auth) == ("127.0.0.1", 5555, False)
    assert flower_env(opts) == {}


@pytest.mark.parametrize("address", ["0.0.0.0", "", "10.1.2.3"])
def test_it_refuses_to_listen_beyond_localhost_without_auth(address):
    with pytest.raises(ConfigError, match="without authentication"):
        flower_options({"address": address})


def test_it_listens_anywhere_with_auth_and_keeps_the_password_off_the_command_line():
    opts = flower_options({"user": "ops", "password": "pw:with-colon", "port": "6000"}, address="0.0.0.0")
    assert opts.port == 6000 and opts.has_auth
    argv = flower_argv(opts, "redis://127.0.0.1:6379/0")
    assert argv[:3] == ["--broker", "redis://127.0.0.1:6379/0", "flower"]
    assert "--address=0.0.0.0" in argv and not any("pw:with-colon" in a for a in argv)
    assert flower_env(opts) == {"FLOWER_BASIC_AUTH": "ops:pw:with-colon"}


@pytest.mark.parametrize("section, message", [
    ({"user": "ops"}, "both user and password"),
    ({"password": "x"}, "both user and password"),
    ({"user": "a:b", "password": "x"}, "flower.user"),
    ({"user": "ops", "password": "a,b"}, "flower.password"),
    ({"port": "http"}, "flower.port: must be a number"),
    ({"port": 70000}, "not a TCP port"),
    ({"passwd": "x"}, "flower.passwd: Extra inputs"),
])
def test_bad_settings_are_refused_with_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        flower_options(section)
