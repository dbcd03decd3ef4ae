"""Catalogues are a parameter everywhere: per-catalogue settings, deployments per catalogue,
and prefect.yaml kept equal to the deployments defined in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from deployments.definitions import FLOWS, build_deployments
from storage.settings import Settings, catalogue_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_ambient_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECFLOW_CATALOGUE", "RECFLOW_CATALOGUES", "RECFLOW_SOURCE__KIND", "RECFLOW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)  # no recflow.toml here


def test_default_catalogues_are_movielens_and_news() -> None:
    assert list(Settings().catalogues) == ["movielens-100k", "news"]
    assert catalogue_settings().catalogue == "movielens-100k"
    assert catalogue_settings().source.kind == "movielens"
    assert catalogue_settings("news").source.kind == "feeds"


def test_environment_names_the_catalogue_when_no_parameter_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECFLOW_CATALOGUE", "news")
    assert catalogue_settings().catalogue == "news"
    assert catalogue_settings("movielens-100k").catalogue == "movielens-100k"
    # A flow's overrides are settings fields: their catalogue wins over the parameter.
    assert catalogue_settings("movielens-100k", {"catalogue": "other"}).catalogue == "other"


def test_a_catalogue_block_applies_to_that_catalogue_only(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = {
        "shop": {"source": {"kind": "csv", "path": "exports/events.csv"}, "kcore": {"user_k": 5}},
        "news": {},
    }
    monkeypatch.setenv("RECFLOW_CATALOGUES", json.dumps(blocks))
    monkeypatch.setenv("RECFLOW_KCORE__ITEM_K", "3")
    shop = catalogue_settings("shop", {"kcore": {"item_k": 2}})
    assert shop.source.kind == "csv" and shop.source.path == Path("exports/events.csv")
    assert (shop.kcore.user_k, shop.kcore.item_k) == (5, 2)  # block and overrides merge, overrides win
    news = catalogue_settings("news")
    assert news.source.kind == "feeds" and (news.kcore.user_k, news.kcore.item_k) == (0, 3)
    assert catalogue_settings("unlisted").source.kind == "movielens"  # shared settings alone


@pytest.mark.parametrize(
    ("catalogues", "message"),
    [
        ({}, "at least one catalogue"),
        ({"bad name": {}}, "'bad name' is not a catalogue name"),
        ({"shop": {"sorce": {}}}, r"catalogues.shop: \['sorce'\]"),
        ({"shop": {"catalogue": "x"}}, r"catalogues.shop: \['catalogue'\]"),
    ],
)
def test_bad_catalogue_blocks_are_refused_by_name(catalogues: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(catalogues=catalogues)


def test_a_bad_value_in_a_block_names_its_field() -> None:
    with pytest.raises(ValidationError, match=r"kcore\.user_k"):
        catalogue_settings("shop", {"catalogues": {"shop": {"kcore": {"user_k": -1}}}})


def _deployments(settings: Settings, overrides: dict | None = None) -> dict[str, dict]:
    found = {}
    for d in build_deployments(settings, overrides):
        crons = [(s.schedule.cron, s.schedule.timezone) for s in d.schedules]  # type: ignore[union-attr]
        found[f"{d.flow_name}/{d.name}"] = {
            "entrypoint": d.entrypoint,
            "parameters": d.parameters,
            "tags": d.tags,
            "crons": crons,
        }
    return found


def test_every_flow_is_deployed_per_catalogue_with_its_catalogue_as_parameter() -> None:
    settings = Settings()
    found = _deployments(settings)
    flows = [spec.flow.name for spec in FLOWS]
    feeds = {"scrape-feeds", "morning-harvest"}
    expected = {f"{f}/movielens-100k" for f in flows if f not in feeds} | {f"{f}/news" for f in flows}
    assert set(found) == expected
    for name, dep in found.items():
        catalogue = name.split("/", 1)[1]
        assert dep["parameters"] == {"catalogue": catalogue}
        assert catalogue in dep["tags"]
    schedule = settings.schedule
    assert found["nightly-refresh/news"]["crons"] == [(schedule.nightly_cron, "UTC")]
    assert found["nightly-refresh/movielens-100k"]["crons"] == [(schedule.nightly_cron, "UTC")]
    assert found["scrape-feeds/news"]["crons"] == [(schedule.scrape_cron, "UTC")]
    assert found["morning-harvest/news"]["crons"] == [(schedule.harvest_cron, "UTC")]
    assert found["train-models/news"]["crons"] == []
    # Each flow shows catalogue as a typed parameter, first in the UI's run form.
    for spec in FLOWS:
        prop = parameter_schema(spec.flow).properties["catalogue"]
        types = [t["type"] for t in prop.get("anyOf", [prop])]
        assert "string" in types and prop["position"] == 0, prop


def test_catalogue_blocks_choose_feed_flows_and_schedules() -> None:
    """Served with overrides (as ``recflow deploy serve`` does with RECFLOW_DEPLOY_OVERRIDES),
    the catalogues and their blocks come from them, and every run gets them back."""
    overrides = {
        "home": "/tmp/elsewhere",
        "catalogues": {
            "wire": {
                "source": {"kind": "feeds", "path": "var/wire"},
                "schedule": {"scrape_cron": "*/15 * * * *"},
            },
            "shop": {"schedule": {"timezone": "Europe/Berlin"}},
        },
    }
    found = _deployments(Settings(**overrides), overrides)
    assert found["scrape-feeds/wire"]["crons"] == [("*/15 * * * *", "UTC")]
    assert "scrape-feeds/shop" not in found and "morning-harvest/shop" not in found
    assert found["nightly-refresh/shop"]["crons"] == [("0 2 * * *", "Europe/Berlin")]
    assert found["nightly-refresh/shop"]["parameters"] == {"catalogue": "shop", "overrides": overrides}
    assert not any(name.endswith(("/news", "/movielens-100k")) for name in found)


def test_prefect_yaml_holds_the_same_deployments_as_the_code() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    in_yaml = {}
    for d in spec["deployments"]:
        flow = next(
            f.flow
            for f in FLOWS
            if f"{f.flow.__module__.replace('.', '/')}.py:{f.flow.fn.__name__}" == d["entrypoint"]
        )
        in_yaml[f"{flow.name}/{d['name']}"] = {
            "entrypoint": d["entrypoint"],
            "parameters": d["parameters"],
            "tags": d["tags"],
            "crons": [(s["cron"], s["timezone"]) for s in d.get("schedules", [])],
        }
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert in_yaml == _deployments(Settings())


def test_the_readme_example_file_configures_two_catalogues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("```toml\n", readme.index("**Catalogues.**")) + len("```toml\n")
    config = tmp_path / "recflow.toml"
    config.write_text(readme[start : readme.index("```", start)])
    monkeypatch.setenv("RECFLOW_CONFIG", str(config))
    assert list(Settings().catalogues) == ["shop", "news"]
    shop = catalogue_settings()
    assert shop.catalogue == "shop" and shop.source.kind == "csv" and shop.kcore.user_k == 5
    assert shop.validation.max_failure_share == 0.02
    news = catalogue_settings("news")
    assert news.source.kind == "feeds" and news.kcore.user_k == 0
    assert news.validation.max_failure_share == 0.02
    names = {f"{d.flow_name}/{d.name}" for d in build_deployments(Settings())}
    assert "nightly-refresh/shop" in names and "scrape-feeds/news" in names
    assert "scrape-feeds/shop" not in names
