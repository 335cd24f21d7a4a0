"""`cairn vm disk|nic add|remove`, on this machine and through an appliance's API: the same
answers, the same refusals."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Cli, Served, login
from cli_helpers import served as served
from test_cli_remote import same_answer


@pytest.mark.slow
def test_disks_and_nics_edited_here_and_through_the_api_answer_alike(served: Served, tmp_path: Path):
    here = Cli(CAIRN_DATA_DIR=str(served.data_dir))
    there = Cli(XDG_CONFIG_HOME=str(tmp_path / "config"))
    login(there, served)
    names = ("hw-here", "hw-there")
    both = ((here, names[0], "52:54:00:00:01:01"), (there, names[1], "52:54:00:00:01:02"))
    for cli, name, _ in both:
        cli.json("vm", "create", name, "--disk", "16M")

    added = [cli.json("vm", "disk", "add", name, "--size", "8M", "--format", "raw") for cli, name, _ in both]
    same_answer(*added, names)
    assert [(d["name"], d["format"]) for d in added[1]["disks"]] == [("vda", "qcow2"), ("vdb", "raw")]
    assert Path(added[1]["disks"][1]["path"]).is_file()

    with_nic = [cli.json("vm", "nic", "add", name, "--model", "e1000", "--mac", mac) for cli, name, mac in both]
    assert [[(n["name"], n["mode"], n["model"], n["mac"]) for n in v["nics"]] for v in with_nic] == [
        [("net0", "user", "e1000", mac)] for _, _, mac in both]
    printed = there("vm", "nic", "add", names[1], "--mode", "bridge:cbr-none").stdout
    assert "net1  bridge cbr-none" in printed

    # Refused alike: the boot disk, a MAC another VM has, a bad --mode; nothing changed.
    for cli, name, _ in both:
        said = cli("vm", "disk", "remove", name, "vda", code=1).stderr
        assert "boot disk" in said, said
        said = cli("vm", "nic", "add", name, "--mac", "52:54:00:00:01:01", code=1).stderr
        assert "already VM hw-here's" in said, said
        said = cli("vm", "nic", "add", name, "--mode", "tap", code=2).stderr
        assert "--mode 'tap'" in said, said
    assert there.json("vm", "show", names[1])["nics"][0]["mac"] == "52:54:00:00:01:02"

    removed = [cli.json("vm", "nic", "remove", name, mac) for cli, name, mac in both]
    assert [n["name"] for n in removed[0]["nics"]] == [] and [n["name"] for n in removed[1]["nics"]] == ["net1"]
    gone = [cli.json("vm", "disk", "remove", name, "vdb", "--delete-file") for cli, name, _ in both]
    same_answer(gone[0]["disks"], gone[1]["disks"], names)
    assert [d["name"] for d in gone[0]["disks"]] == ["vda"]
    assert not Path(added[1]["disks"][1]["path"]).exists()
