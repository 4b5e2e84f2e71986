"""The store API is declared once (``LightningStore``); FileStore, the HTTP client and the
server's route table are held to it. mypy checks the signatures statically; these tests
check what mypy cannot: that nothing is left out on either side."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from store_fs.client import LightningStoreClient
from store_fs.lightning_store import LightningStore
from store_fs.server.routes import StoreApi
from store_fs.store import FileStore

# Members of the protocol that no route serves, and why.
NOT_ROUTED = {"capabilities": "each implementation answers it itself, without a request"}


def protocol_members() -> set[str]:
    return {name for name in vars(LightningStore) if not name.startswith("_")}


def test_protocol_declares_upstreams_methods() -> None:
    # A sample of upstream 0.3's LightningStore methods, plus agl's heartbeat.
    expected = {
        "enqueue_rollout",
        "dequeue_rollout",
        "start_rollout",
        "start_attempt",
        "query_rollouts",
        "update_attempt",
        "add_span",
        "query_spans",
        "wait_for_rollouts",
        "add_resources",
        "get_latest_resources",
        "update_worker",
        "heartbeat",
    }
    assert expected <= protocol_members()


@pytest.mark.parametrize("implementation", [FileStore, LightningStoreClient])
def test_implementations_define_every_method_with_the_protocols_signature(implementation: type) -> None:
    assert LightningStore in implementation.__mro__
    for name in protocol_members():
        declared = inspect.getattr_static(LightningStore, name)
        defined = inspect.getattr_static(implementation, name)
        assert defined is not declared, f"{implementation.__name__}.{name} is not implemented"
        if isinstance(declared, property):
            assert isinstance(defined, property), name
            continue
        want = inspect.signature(declared)
        got = inspect.signature(defined)
        assert list(got.parameters) == list(want.parameters), name
        for param in want.parameters.values():
            other = got.parameters[param.name]
            assert (other.kind, other.default) == (param.kind, param.default), f"{name}({param.name})"
        assert inspect.iscoroutinefunction(defined), f"{implementation.__name__}.{name} must be async"


def test_every_method_has_a_route_and_every_route_a_method(tmp_path: Path) -> None:
    api = StoreApi(FileStore(tmp_path / "store"))
    served: set[str] = set()
    for route in api.routes:
        names = {method.__name__ for method in route.serves}
        for method in route.serves:
            assert getattr(LightningStore, method.__name__) is method, f"{route.template}: {method}"
        if route.template != "/health":
            assert names, f"{route.method} {route.template} serves no store method"
        served |= names
    assert served == protocol_members() - set(NOT_ROUTED)
    assert not served & set(NOT_ROUTED)


def test_each_contract_is_written_once() -> None:
    # Implementations carry no docstring of their own on protocol methods, so help() and
    # inspect.getdoc() show the protocol's contract.
    for implementation in (FileStore, LightningStoreClient):
        for name in protocol_members() - set(NOT_ROUTED):
            method = inspect.getattr_static(implementation, name)
            assert method.__doc__ is None, f"{implementation.__name__}.{name} restates its contract"
            assert inspect.getdoc(getattr(implementation, name)) == inspect.getdoc(
                getattr(LightningStore, name)
            )
