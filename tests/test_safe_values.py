"""Hyperparameter values a ``weights_only`` load cannot read, stored in a safe form and rebuilt without imports."""

from __future__ import annotations

import argparse
import enum
import io
import logging
import pathlib
from collections import OrderedDict

import torch

from torchckpt.integrations import safe_values


class Color(enum.Enum):
    RED = 1
    BLUE = "blue"


class Inner:
    class Kind(str, enum.Enum):
        A = "a"


class AttrDict(dict):
    pass


def round_trip(value):
    buf = io.BytesIO()
    torch.save(safe_values.encode(value), buf)
    buf.seek(0)
    return safe_values.decode(torch.load(buf, weights_only=True))  # a safe load reads the encoded form


def test_paths_enums_namespaces_and_dict_subclasses():
    value = AttrDict(
        data=pathlib.Path("/data/x"),
        pure=pathlib.PureWindowsPath("C:/x"),
        color=Color.BLUE,
        kind=Inner.Kind.A,
        args=argparse.Namespace(out=pathlib.Path("o"), n=3, nested=argparse.Namespace(c=Color.RED)),
        seq=[pathlib.Path("a"), (Color.RED, 2)],
        od=OrderedDict(b=1, a=2),
        t=torch.ones(2),
    )
    back = round_trip(value)
    assert type(back) is dict
    assert back["data"] == pathlib.Path("/data/x") and type(back["data"]) is type(pathlib.Path("/data/x"))
    assert type(back["pure"]) is pathlib.PureWindowsPath
    assert back["color"] is Color.BLUE and back["kind"] is Inner.Kind.A
    assert back["args"] == argparse.Namespace(out=pathlib.Path("o"), n=3, nested=argparse.Namespace(c=Color.RED))
    assert back["seq"] == [pathlib.Path("a"), (Color.RED, 2)]
    assert isinstance(back["od"], OrderedDict) and list(back["od"]) == ["b", "a"]
    assert torch.equal(back["t"], torch.ones(2))
    assert safe_values.types_in(back) >= {Color, Inner.Kind, argparse.Namespace, pathlib.PureWindowsPath}


def test_an_enum_whose_module_is_not_imported_is_never_imported(caplog):
    rec = {safe_values.TAG: "enum", "class": "os:system", "name": "x", "value": "rm -rf /"}
    missing = {safe_values.TAG: "enum", "class": "no_such_module_xyz:Color", "name": "RED", "value": 1}
    with caplog.at_level(logging.WARNING):
        assert safe_values.decode(rec) == "rm -rf /"  # os.system is not an Enum: only the value comes back
        assert safe_values.decode(missing) == 1
    assert "no_such_module_xyz" in caplog.text
    assert safe_values.decode({safe_values.TAG: "path", "class": "Popen", "value": "x"}) == {
        safe_values.TAG: "path",
        "class": "Popen",
        "value": "x",
    }  # unknown path classes stay plain data
