"""The CIL experiment's load check: a complete checkpoint passes, a changed
byte or a file cut short is a torn load, never an update."""
import io
import os
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cil_common as cc  # noqa: E402


def state(seq=3):
    torch.manual_seed(0)
    m = cc.nt3_model(256)
    # the pad changes at every checkpoint, as in cil_producer.py
    return cc.make_state({k: v.clone() for k, v in m.state_dict().items()},
                         torch.randn(1 << 16) + seq, seq, seq * 100)


def roundtrip(st):
    buf = io.BytesIO()
    torch.save(st, buf)
    return buf.getvalue()


def test_a_complete_checkpoint_passes():
    data = roundtrip(state())
    assert cc.verify(torch.load(io.BytesIO(data))) == ""


def test_a_changed_weight_pad_or_tag_is_caught():
    for spoil in ("weight", "pad", "seq"):
        st = torch.load(io.BytesIO(roundtrip(state())))
        if spoil == "weight":
            next(iter(st["model"].values())).view(-1)[0] += 1
        elif spoil == "pad":
            st["pad"][-1] += 1
        else:
            st["seq"] += 1
        assert cc.verify(st) == "CRC mismatch", spoil


def test_a_file_cut_short_does_not_load():
    data = roundtrip(state())
    for cut in (0, 100, len(data) // 2, len(data) - 10):
        with pytest.raises(Exception):
            st = torch.load(io.BytesIO(data[:cut]))
            assert cc.verify(st) == ""      # a load that got through must still fail the check


def test_old_and_new_halves_are_caught():
    """A reader that got the first half of one version and the rest of the next (torch.load
    does not check the zip records' CRCs: only the checkpoint's own CRC catches this)."""
    a, b = roundtrip(state(3)), roundtrip(state(4))
    assert len(a) == len(b)
    mixed = a[:len(a) // 2] + b[len(a) // 2:]
    try:
        st = torch.load(io.BytesIO(mixed))
    except Exception:
        return
    assert cc.verify(st) != ""
