"""Whatever a file holds, the loader returns an Inventory or raises InventoryError: nothing else."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import tomlkit
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jackin_remote.errors import InventoryError
from jackin_remote.inventory import Inventory
from jackin_remote.inventory.loader import (
    HOST_KEYS,
    LIMIT_KEYS,
    TOP_LEVEL_KEYS,
    parse_inventory,
)
from jackin_remote.inventory.selectors import select_hosts
from jackin_remote.inventory.toml_lines import index_source

VALID_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
EXAMPLES = Path(__file__).resolve().parents[2] / "inventory" / "examples"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Documents are slower to build and load: fewer of them keeps the unit suite quick.
FUZZ_DOCUMENTS = settings(FUZZ, max_examples=150)


def load_or_inventory_error(content: str | bytes) -> Inventory | None:
    """Load `content`; an InventoryError is a fine answer, any other exception fails the test."""
    try:
        inventory = parse_inventory([("fuzz.toml", content)])
    except InventoryError as err:
        assert err.file == "fuzz.toml" and err.message
        return None
    assert "local" in inventory.hosts
    return inventory


# ---- raw input -----------------------------------------------------------------------------


@FUZZ
@given(st.text())
def test_arbitrary_text(text: str) -> None:
    load_or_inventory_error(text)


@FUZZ
@given(st.binary())
def test_arbitrary_bytes(data: bytes) -> None:
    load_or_inventory_error(data)


TOML_ALPHABET = st.sampled_from(list("[]{}=.,\"'#\n \t-_:abhostgrupdefaultsl0123456789"))


@FUZZ
@given(st.text(alphabet=TOML_ALPHABET, max_size=200))
def test_toml_like_text(text: str) -> None:
    load_or_inventory_error(text)
    index_source(text)  # the line scanner must cope with anything too


@FUZZ
@given(st.data())
def test_mutated_example_files(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["fleet.toml", "local.toml"]))
    lines = (EXAMPLES / name).read_text().split("\n")
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "duplicate", "truncate", "insert"]))
        if action == "drop":
            del lines[at]
        elif action == "duplicate":
            lines.insert(at, lines[at])
        elif action == "truncate":
            lines[at] = lines[at][: data.draw(st.integers(min_value=0, max_value=40))]
        else:
            lines.insert(at, data.draw(st.text(alphabet=TOML_ALPHABET, max_size=30)))
        if not lines:
            break
    load_or_inventory_error("\n".join(lines))


# ---- TOML documents built with tomlkit -------------------------------------------------------


def finite_or_special_floats() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=True, allow_infinity=True)


SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    finite_or_special_floats(),
    st.text(max_size=40),
    st.sampled_from(["ssh", "local", "docker", "4g", "~/.jackin", "10.0.0.1", "web", "all"]),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
)
KEYS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from([*TOP_LEVEL_KEYS, *HOST_KEYS, *LIMIT_KEYS, "local", "web", "token"]),
)


def toml_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(KEYS, children, max_size=4),
        ),
        max_leaves=20,
    )


def dumps_or_none(document: dict[str, Any]) -> str | None:
    try:
        return tomlkit.dumps(document)
    except Exception:  # some shapes cannot be written as TOML at all: nothing to test then
        return None


@FUZZ_DOCUMENTS
@given(st.dictionaries(KEYS, toml_values(), max_size=5))
def test_arbitrary_toml_documents(document: dict[str, Any]) -> None:
    text = dumps_or_none(document)
    if text is not None:
        load_or_inventory_error(text)


# Documents shaped like inventories, so the fuzzing reaches field validation, merging,
# groups and jumps instead of stopping at "unknown top-level key".

NAMES = st.sampled_from(["local", "web", "db", "bastion", "all", "labels", "Bad", "a-b", "x"])
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "address": st.one_of(st.text(max_size=20), st.sampled_from(["10.0.0.1", "::1", "-x"])),
    "port": st.one_of(st.integers(), st.text(max_size=5)),
    "user": st.one_of(st.text(max_size=10), st.just("ops")),
    "identity_file": st.one_of(st.text(max_size=20), st.just("~/.ssh/id")),
    "jump": st.one_of(NAMES, st.text(max_size=20), st.just("u@h:22")),
    "host_key": st.one_of(st.text(max_size=40), st.just(VALID_KEY)),
    "transport": st.one_of(st.sampled_from(["ssh", "local"]), st.text(max_size=5)),
    "labels": st.lists(st.one_of(NAMES, st.integers()), max_size=3),
    "capacity": st.one_of(st.integers(), st.floats()),
    "root": st.one_of(st.text(max_size=20), st.sampled_from(["~/.jackin", "/srv/x", "/"])),
    "backend": st.sampled_from(["docker", "podman"]),
    "limits": st.dictionaries(
        st.sampled_from([*LIMIT_KEYS, "swap"]),
        st.one_of(st.integers(), finite_or_special_floats(), st.sampled_from(["4g", "0", "1x"])),
        max_size=3,
    ),
}
HOST_TABLES = st.fixed_dictionaries(
    {}, optional={key: strategy for key, strategy in FIELD_VALUES.items()}
)
INVENTORY_DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "defaults": HOST_TABLES,
        "hosts": st.dictionaries(NAMES, HOST_TABLES, max_size=4),
        "groups": st.dictionaries(NAMES, st.lists(NAMES, max_size=4), max_size=3),
    },
)


@FUZZ_DOCUMENTS
@given(st.lists(INVENTORY_DOCUMENTS, min_size=1, max_size=3))
def test_inventory_shaped_documents(documents: list[dict[str, Any]]) -> None:
    sources = []
    for number, document in enumerate(documents):
        text = dumps_or_none(document)
        if text is None:
            return
        sources.append((f"f{number}.toml", text))
    try:
        inventory = parse_inventory(sources)
    except InventoryError as err:
        assert err.file in {name for name, _ in sources}
        event("refused: " + (err.field or "syntax").split(".")[-1])
        return
    event("valid inventory")
    # A valid inventory: every group selects, and `all` covers every host.
    assert len(select_hosts(inventory, "all")) == len(inventory.hosts)
    for group in inventory.groups:
        select_hosts(inventory, group)


def test_nan_is_never_a_valid_cpu_count() -> None:
    assert load_or_inventory_error("[hosts.web.limits]\ncpus = nan\n") is None
