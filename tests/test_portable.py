"""Provenance made portable (fer_cli.models.portable): a shipped model names the places its data came from,
never the build machine's paths."""

from fer_cli.models.portable import absolute_paths, portable

BUILT = {
    "train_data": "/work/shared/data/fer2013",
    "command": "fer train /work/shared/data/fer2013 --votes /work/shared/data/ferplus/v.csv --out /root/runs/a.pt",
    "initialised_from": {"model": "/root/runs/start.pt", "sha256": "ab" * 32},
    "resumed_by": ["fer train --resume --out /root/runs/a.pt"],
    "seed": 0,
    "shape": (48, 48),
}


def test_each_place_is_written_as_its_name_in_every_string():
    made = portable(BUILT, {"/work/shared/": "../shared", "/root/runs": "runs"})
    assert made["train_data"] == "../shared/data/fer2013"
    assert made["command"] == "fer train ../shared/data/fer2013 --votes ../shared/data/ferplus/v.csv --out runs/a.pt"
    assert made["initialised_from"] == {"model": "runs/start.pt", "sha256": "ab" * 32}
    assert made["resumed_by"] == ["fer train --resume --out runs/a.pt"]
    assert made["seed"] == 0 and made["shape"] == (48, 48)
    assert absolute_paths(made) == []


def test_a_folder_inside_another_takes_its_own_name_and_a_longer_name_is_not_a_place():
    places = {"/data": "DATA", "/data/votes": "VOTES"}
    assert portable("/data/votes/v.csv /data/x /data2/y /database", places) == "VOTES/v.csv DATA/x /data2/y /database"


def test_what_is_left_absolute_is_listed():
    left = absolute_paths(portable(BUILT, {"/work/shared": "../shared"}))
    assert sorted(set(left)) == ["/root/runs/a.pt", "/root/runs/start.pt"]
    assert absolute_paths({"/keys/are/names": "relative/path ./x ~/y a/b"}) == []
