import torch
import torch.nn as nn

from torchckpt import CheckpointManager


def test_round_trip_every_backend(backend):
    net = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    mgr = backend.manager()
    info = mgr.save(1, model=net, metrics={"val_loss": 0.5})
    other = nn.Sequential(nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 1))
    ckpt = backend.manager().restore(model=other)
    assert ckpt.info.version == info.version
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert [v.version for v in backend.manager(read_only=True).list()] == [info.version]
