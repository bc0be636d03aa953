"""ServeConfig: flags over QUIVER_* variables over defaults, and bad values refused with their name."""

import argparse
from dataclasses import fields

import pytest

from quiver.service.config import ServeConfig, add_arguments, env_name, from_sources


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults() -> None:
    c = from_sources(parse("--root", "/data"), env={})
    assert c == ServeConfig(root="/data")
    assert (c.listen, c.workers, c.verify, c.max_entities) == ("127.0.0.1:50051", 1, "full", 1000)


def test_every_field_has_a_flag_and_a_variable() -> None:
    env = {env_name(f.name): "7" for f in fields(ServeConfig) if f.type in (int, float)}
    c = from_sources(parse("--root", "/data"), env=env)
    for f in fields(ServeConfig):
        if f.type in (int, float):
            assert getattr(c, f.name) == 7, f.name
    flags = parse("--root", "/r", "--listen", "", "--uds", "/s", "--tls-cert", "c", "--tls-key", "k",
                  "--tls-client-ca", "ca", "--verify", "size", "--loop", "asyncio", "--metrics-host", "0.0.0.0")
    c = from_sources(flags, env={})
    assert (c.listen, c.uds, c.tls_cert, c.tls_key, c.tls_client_ca, c.verify, c.loop, c.metrics_host) == (
        "", "/s", "c", "k", "ca", "size", "asyncio", "0.0.0.0")


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    env = {"QUIVER_ROOT": "/env-root", "QUIVER_WORKERS": "3", "QUIVER_POLL_SECONDS": "0.5", "QUIVER_VERIFY": "size"}
    c = from_sources(parse("--workers", "2"), env=env)
    assert (c.root, c.workers, c.poll_seconds, c.verify) == ("/env-root", 2, 0.5, "size")
    assert c.max_entities == ServeConfig.max_entities
    c = from_sources(parse("--root", "/flag-root", "--verify", "full"), env=env)
    assert (c.root, c.workers, c.verify) == ("/flag-root", 3, "full")
    assert from_sources(parse("--root", "/r", "--verify", "background"), env={}).verify == "background"


def test_the_lease_refresh_interval_comes_from_the_flag_or_the_environment() -> None:
    """The one place QUIVER_LEASE_REFRESH_SECONDS is read; the worker passes it to its ServerLease."""
    assert from_sources(parse("--root", "/r"), env={}).lease_refresh_seconds == 30.0
    env = {"QUIVER_LEASE_REFRESH_SECONDS": "1.5"}
    assert from_sources(parse("--root", "/r"), env=env).lease_refresh_seconds == 1.5
    assert from_sources(parse("--root", "/r", "--lease-refresh-seconds", "2"), env=env).lease_refresh_seconds == 2.0


def test_an_empty_flag_still_wins() -> None:
    c = from_sources(parse("--root", "/r", "--listen", "", "--uds", "/s"), env={"QUIVER_LISTEN": "0.0.0.0:1"})
    assert c.listen == ""


def test_cache_is_split_across_workers() -> None:
    c = ServeConfig(root="/r", cache_mb=256, workers=4)
    assert c.cache_bytes_per_worker == 64 << 20
    assert ServeConfig(root="/r", uds="/s").uds_path(0) == "/s"
    assert ServeConfig(root="/r", uds="/s").uds_path(2) == "/s.2"


def test_missing_root() -> None:
    with pytest.raises(ValueError, match="QUIVER_ROOT"):
        from_sources(parse(), env={})


@pytest.mark.parametrize("name,value", [("QUIVER_WORKERS", "two"), ("QUIVER_POLL_SECONDS", "1s"),
                                        ("QUIVER_METRICS_PORT", ""), ("QUIVER_MAX_ENTITIES", "1e3")])
def test_environment_value_of_the_wrong_type(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{name}={value!r}: expected"):
        from_sources(parse("--root", "/r"), env={name: value})


def test_flag_of_the_wrong_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse("--root", "/r", "--workers", "two")
    assert e.value.code == 2 and "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("values,words", [
    ({"listen": "", "uds": ""}, "nothing to listen on"),
    ({"verify": "fast"}, "verify 'fast'"),
    ({"tls_cert": "c"}, "--tls-key"),
    ({"tls_key": "k"}, "--tls-cert"),
    ({"tls_client_ca": "ca"}, "--tls-client-ca"),
    ({"workers": 0}, "workers"),
    ({"max_entities": 0}, "max-entities"),
    ({"max_concurrent": -1}, "max-concurrent"),
    ({"cache_mb": 0}, "cache-mb"),
    ({"warm_mb": -2}, "warm-mb"),
    ({"warm_mb_per_s": -1}, "warm-mb-per-s"),
    ({"warm_mb_per_s": float("nan")}, "warm-mb-per-s"),
    ({"poll_seconds": 0}, "poll-seconds"),
    ({"poll_seconds": -1}, "poll-seconds"),
    ({"drain_seconds": -1}, "drain-seconds"),
    ({"lease_refresh_seconds": 0}, "lease-refresh-seconds"),
    ({"lease_refresh_seconds": 600}, "lease-refresh-seconds"),   # a lease not rewritten for 600 s is stale
    ({"lease_refresh_seconds": float("nan")}, "lease-refresh-seconds"),
    ({"loop": "tokio"}, "loop 'tokio'"),
    ({"metrics_port": -1}, "metrics-port"),
    ({"metrics_port": 70000}, "metrics-port"),
])
def test_bad_values_are_refused_by_name(values: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ServeConfig(root="/r", **values)  # type: ignore[arg-type]


def test_quiver_serve_reports_a_bad_value_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from quiver.cli import main

    assert main(["serve", "--root", "/nonexistent", "--verify", "fast"]) == 2
    assert "verify 'fast'" in capsys.readouterr().err
