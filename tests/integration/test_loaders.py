"""Unmodified producers and loaders on a real mount: torch, h5py, numpy."""
import os

import h5py
import numpy as np
import torch


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(1, 8, 5), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 60, 2))


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_torch_save_load_direct(mnt):
    model = small_model()
    p = mnt.path("model.pt")
    torch.save(model.state_dict(), p)
    assert_same_state(model.state_dict(), torch.load(p))
    # a second save over the same path is a new version
    with torch.no_grad():
        model[0].weight.add_(1.0)
    torch.save(model.state_dict(), p)
    assert_same_state(model.state_dict(), torch.load(p))
    assert os.getxattr(p, "user.viperfs.version") == b"2"


def test_torch_safe_save_with_replace(mnt):
    model = small_model()
    p = mnt.path("ckpt", "model.pt")
    os.mkdir(mnt.path("ckpt"))
    for step in range(3):
        with torch.no_grad():
            model[3].bias.fill_(step)
        tmp = p + ".tmp"
        with open(tmp, "wb") as f:
            torch.save({"step": step, "state": model.state_dict()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        got = torch.load(p)
        assert got["step"] == step
        assert_same_state(model.state_dict(), got["state"])
    assert os.listdir(mnt.path("ckpt")) == ["model.pt"]
    mnt.flush()
    got = torch.load(mnt.pfs_path("ckpt", "model.pt"))
    assert got["step"] == 2


def test_h5py_write_modify_read(mnt):
    p = mnt.path("weights.h5")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((256, 512)).astype(np.float32)
    with h5py.File(p, "w") as f:
        f.create_dataset("layer1/kernel", data=a)
        f.create_dataset("layer1/bias", data=np.arange(512, dtype=np.float32))
        f.attrs["epoch"] = 3
    # r+ rewrites in place: positional overwrites inside the file
    with h5py.File(p, "r+") as f:
        f["layer1/bias"][:10] = -1
        f.attrs["epoch"] = 4
    with h5py.File(p, "r") as f:
        np.testing.assert_array_equal(f["layer1/kernel"][()], a)
        b = f["layer1/bias"][()]
        assert (b[:10] == -1).all() and b[10] == 10
        assert f.attrs["epoch"] == 4


def test_numpy_save_mmap_and_savez(mnt):
    a = np.random.default_rng(2).standard_normal((1024, 1024))
    p = mnt.path("w.npy")
    np.save(p, a)
    m = np.load(p, mmap_mode="r")
    np.testing.assert_array_equal(m, a)
    del m
    pz = mnt.path("bundle.npz")
    np.savez(pz, a=a, b=np.arange(10))
    with np.load(pz) as z:
        np.testing.assert_array_equal(z["a"], a)
        np.testing.assert_array_equal(z["b"], np.arange(10))
    pc = mnt.path("bundle_c.npz")
    np.savez_compressed(pc, a=a)
    with np.load(pc) as z:
        np.testing.assert_array_equal(z["a"], a)
