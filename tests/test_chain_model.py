"""The snapshot tree model alone: shapes, merge choices, limits, persistence, repair."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chain import Intent, NewLayer, TreeError, UnknownSnapshotError, VMTree

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def tick(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


class Builder:
    """A two-disk tree whose layer files are named after the step that made them."""

    def __init__(self) -> None:
        self.tree = VMTree.new("vm", {"vda": "/d/vda.qcow2", "vdb": "/d/vdb.qcow2"}, T0)
        self.step = 0

    def layers(self) -> dict[str, tuple[str, str]]:
        self.step += 1
        return {d: (f"{d}{self.step}", f"/d/{d}.{self.step}.qcow2") for d in ("vda", "vdb")}

    def snap(self, name: str, automatic: bool = False):
        return self.tree.take_snapshot(f"s-{name}", name, automatic, tick(self.step), self.layers())

    def revert(self, name: str) -> list[str]:
        return self.tree.revert(self.tree.snapshot(name), tick(self.step), self.layers())


def test_snapshot_freezes_the_active_layers_and_chains_grow():
    b = Builder()
    a = b.snap("a")
    assert b.tree.nodes[a.nodes["vda"]].file == "/d/vda.qcow2"
    b.snap("b")
    assert [n.file for n in b.tree.active_chain("vda")] == ["/d/vda.2.qcow2", "/d/vda.1.qcow2", "/d/vda.qcow2"]
    assert b.tree.current_parent().name == "b"
    assert b.tree.snapshot_parent(b.tree.snapshot("b")).name == "a"


def test_revert_starts_a_branch_and_drops_the_unsaved_layer():
    b = Builder()
    b.snap("a")
    b.snap("b")
    dropped = b.revert("a")
    assert sorted(dropped) == ["/d/vda.2.qcow2", "/d/vdb.2.qcow2"]
    node_a = b.tree.nodes[b.tree.snapshot("a").nodes["vda"]]
    assert [c.file for c in b.tree.children(node_a)] == ["/d/vda.1.qcow2", "/d/vda.3.qcow2"]
    assert b.tree.current_parent().name == "a"


def test_merge_choice_follows_shape_and_size():
    b = Builder()
    b.snap("a")
    b.snap("b")
    tree = b.tree
    a, snap_b = tree.snapshot("a"), tree.snapshot("b")
    for node in tree.nodes.values():
        node.size = 100
    tree.active("vda").size = 10          # the child of b's layer holds less: commit it down
    tree.active("vdb").size = 200         # here the layer itself holds less: pull it up
    assert [m.kind for m in tree.plan_delete(snap_b)] == ["commit", "pull"]
    assert [m.kind for m in tree.plan_delete(snap_b, "pull")] == ["pull", "pull"]
    b.revert("a")                          # a's layer now has two children
    assert {m.kind for m in tree.plan_delete(a)} == {"pull"}
    with pytest.raises(TreeError, match="children"):
        tree.plan_delete(a, "commit")
    assert {m.kind for m in tree.plan_delete(snap_b)} == {"drop"}   # b is a leaf now


def test_applying_commit_and_pull_keeps_every_other_point():
    b = Builder()
    b.snap("a")
    b.snap("b")
    b.snap("c")
    tree = b.tree
    merges = tree.plan_delete(tree.snapshot("b"), "commit")
    assert merges[0].obsolete_file == "/d/vda.2.qcow2"
    for m in merges:
        tree.apply_merge(tree.snapshot("b"), m)
    # c's layer now lives in b's old file, directly on a's layer.
    c = tree.nodes[tree.snapshot("c").nodes["vda"]]
    assert c.file == "/d/vda.1.qcow2" and tree.nodes[c.parent].snapshot == "s-a"
    snap_a = tree.snapshot("a")
    for m in tree.plan_delete(snap_a, "pull"):
        assert m.obsolete_file.endswith(f"{m.disk}.qcow2")
        tree.apply_merge(snap_a, m)
    assert {s.name for s in tree.snapshots.values()} == {"c"}
    assert [n.file for n in tree.active_chain("vda")] == ["/d/vda.3.qcow2", "/d/vda.1.qcow2"]


def test_chain_limit_rotates_automatic_and_refuses_manual():
    b = Builder()
    b.snap("auto1", automatic=True)
    b.snap("man1")
    assert b.tree.check_new_snapshot("x", False, limit=4) is None
    b.snap("auto2", automatic=True)      # chains now have 4 layers
    with pytest.raises(TreeError, match="4 of at most 4"):
        b.tree.check_new_snapshot("x", False, limit=4)
    assert b.tree.check_new_snapshot("x", True, limit=4).name == "auto1"
    with pytest.raises(TreeError, match="already has a snapshot named"):
        b.tree.check_new_snapshot("man1", True, limit=4)


def test_unknown_snapshot_and_round_trip():
    b = Builder()
    b.snap("a")
    with pytest.raises(UnknownSnapshotError):
        b.tree.snapshot("nope")
    again = VMTree.from_dict(b.tree.to_dict())
    assert again == b.tree


def test_adopting_a_real_chain_and_dropping_lost_layers():
    b = Builder()
    b.snap("a")
    b.snap("b")
    tree = b.tree
    # Someone committed vda's layer 1 away and made an overlay X by hand.
    notes = tree.adopt_chain("vda", ["/d/X.qcow2", "/d/vda.2.qcow2", "/d/vda.qcow2", "/base.img"], tick(9))
    assert [n.file for n in tree.active_chain("vda")] == ["/d/X.qcow2", "/d/vda.2.qcow2", "/d/vda.qcow2"]
    assert any("adopted /d/X.qcow2" in n for n in notes)
    lost = next(n for n in tree.nodes.values() if n.file == "/d/vda.1.qcow2")
    notes = tree.drop_nodes({lost.id})
    assert "dropped snapshot b: a layer of it is gone" in notes
    assert all(n.snapshot is not None or n.file in ("/d/X.qcow2", "/d/vdb.2.qcow2") for n in tree.nodes.values())


def test_adopting_an_empty_chain_is_refused_and_changes_nothing():
    b = Builder()
    b.snap("a")
    before = b.tree.to_dict()
    with pytest.raises(TreeError, match="vda: no image file"):
        b.tree.adopt_chain("vda", [], tick(9))
    assert b.tree.to_dict() == before


def test_a_merge_kind_chosen_earlier_is_kept_or_refused_when_the_shape_changed():
    b = Builder()
    b.snap("a")
    b.snap("b")
    tree = b.tree
    assert tree.merge(tree.snapshot("b"), "vda", "pull").kind == "pull"
    assert tree.merge(tree.snapshot("a"), "vda", "commit").children[0].file == "/d/vda.1.qcow2"
    b.revert("a")                          # a's layer now has two children
    with pytest.raises(TreeError, match="2 children now"):
        tree.merge(tree.snapshot("a"), "vda", "commit")
    with pytest.raises(TreeError, match="0 children now"):
        tree.merge(tree.snapshot("b"), "vdb", "pull")


def test_intent_round_trip():
    intent = Intent("create", "n1", layers=[NewLayer("vda", "n2", "/d/vda.n2.qcow2")], merges={"vda": "commit"},
                    rate_limit=5, obsolete=["/d/x"])
    assert Intent.from_dict(intent.to_dict()) == intent
    assert intent.describe() == "create of snapshot n1 (started)"
