"""build_service in-process: every port binds (port 0), answers, and is closed again by stopService."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError

from meshd.config import Config, Role
from meshd.tap import build_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest_twisted.ensureDeferred
async def test_services_bind_port_zero_and_unbind(tmp_path: Path) -> None:
    cfg = Config(
        role=Role.CLIENT,
        api_port=0,
        console_port=0,
        bind_address="127.0.0.1",
        nostr_relays=("ws://127.0.0.1:9",),
        state_dir=tmp_path,
    )
    svc = build_service(cfg, reactor)
    assert [s.name for s in svc] == ["node", "discovery", "gate", "api", "console"]
    svc.privilegedStartService()
    svc.startService()
    api, console = svc.node.api_port, svc.node.console_port
    assert api and console and api != console
    quic_port = int(svc.node.quic_address().rsplit(":", 1)[1])
    assert quic_port > 0
    for port in (api, console):
        resp = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        assert json.loads(await resp.content()) == {"status": "ok"}
    resp = await treq.get(f"http://127.0.0.1:{console}/api/status", persistent=False)
    status = json.loads(await resp.content())
    assert status["api_port"] == api and status["meshd"]["console_port"] == console
    await svc.stopService()
    for port in (api, console):
        with pytest.raises(ConnectionRefusedError):
            await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
    assert svc.node.endpoint is None
