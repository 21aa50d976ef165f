"""What the CIL experiment's producer and consumer share: the model and data
(imported from tests/planner/nt3_run.py), and the checkpoint's format with
its integrity check.

A checkpoint is one dict saved with plain torch.save:
    {"model": state_dict, "pad": tensor, "seq": int, "iter": int, "crc": int}
"model" is the NT3-like CNN's weights.  "pad" brings the file to the size
of a real checkpoint (NT3.A's is 600 MB); its values change at every
checkpoint, as trained weights do, so no chunk of one version equals the
last one's.  "crc" is a CRC-32 over every tensor's bytes (in key order),
the pad, seq and iter: a consumer that loads a dict whose CRC does not
match (a file read while it was being rewritten) counts a torn load.
"""
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "planner"))

from nt3_run import make_data, nt3_model  # noqa: E402,F401  (re-exported)

DATA_SEED = 42          # the consumers' inference samples
TRAIN_SEED = 7          # the producer's stream of training batches
MODEL_SEED = 0


def digest(weights, pad, seq, it):
    crc = zlib.crc32(struct.pack("<qq", seq, it))
    for k in sorted(weights):
        crc = zlib.crc32(k.encode(), crc)
        crc = zlib.crc32(weights[k].contiguous().numpy().view("u1"), crc)
    return zlib.crc32(pad.numpy().view("u1"), crc)


def make_state(weights, pad, seq, it):
    return {"model": weights, "pad": pad, "seq": seq, "iter": it,
            "crc": digest(weights, pad, seq, it)}


def verify(state):
    """'' when state is a complete checkpoint, else what is wrong with it."""
    if not isinstance(state, dict) or not {"model", "pad", "seq", "iter", "crc"} <= set(state):
        return "not a checkpoint dict"
    if digest(state["model"], state["pad"], state["seq"], state["iter"]) != state["crc"]:
        return "CRC mismatch"
    return ""
