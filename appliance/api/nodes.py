"""The management nodes under /api/v1/nodes: which are alive and which one leads (jobs/nodes.py)."""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .dependencies import ApplianceDep


class NodeOut(BaseModel):
    name: str
    address: str | None = Field(description="where its `cairn serve` listens")
    alive: bool = Field(description="it beat less than a lease ago (on SQLite: its `cairn serve` runs)")
    heartbeat_at: datetime
    leader: bool


class NodesOut(BaseModel):
    leader: str | None = Field(description="the node whose `cairn serve` leads now; none while the lease is free")
    term: int = Field(description="the leader's term: it grows with every change of leader")
    lease_expires_at: datetime | None
    nodes: list[NodeOut]


router = APIRouter(prefix="/api/v1", tags=["nodes"])


@router.get("/nodes", response_model=NodesOut)
def list_nodes(appliance: ApplianceDep) -> NodesOut:
    nodes = appliance.jobs.nodes
    leader = nodes.leader()
    return NodesOut(leader=leader.node, term=leader.term, lease_expires_at=leader.expires_at,
                    nodes=[NodeOut(name=n.name, address=n.address, alive=n.alive, heartbeat_at=n.heartbeat_at,
                                   leader=n.name == leader.node) for n in nodes.status()])
